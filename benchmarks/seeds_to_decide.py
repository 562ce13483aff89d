"""Which variance reduction lowers the seeds a cell needs to be decided? Measured side by side.

    python benchmarks/seeds_to_decide.py                  # ghost_size's grid, 6 seeds a cell
    python benchmarks/seeds_to_decide.py --seeds 3 --batch-sizes 512 --epochs 2   # a quick look

Runs the `ghost_size` grid twice with the same seeds, on `mnist1d-cnn` (2,000 test samples)
and on `mnist1d-cnn-10k` (the same training, measured on 10,000), so each seed is the same
model measured twice. For every cell it prints the seeds a side that would decide it with
80% power at one look (the observed gap and spreads taken as the truth, `decide_gap`'s
`seeds_to_decide` rule; "≤ n" where n seeds already decide it at that power), under:

- final: the last epoch's test accuracy (today's rule), 2k test set;
- 10k: the same on the 10,000-sample test set;
- last3: the mean test accuracy over the last 3 epochs (2k);
- paired: the gap taken seed by seed (baseline seed s against cell seed s, 2k): pairing.

and the median over cells of each column, with the wall time of each run.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import pandas as pd
from _provenance import git_commit

from tunegap import RunOptions, run_study
from tunegap.analysis.decide import CONFIDENCE, DEFAULT_MARGIN
from tunegap.analysis.power import MAX_SEEDS_TO_DECIDE, seeds_for_power
from tunegap.studies import ghost_size

MAX_N = MAX_SEEDS_TO_DECIDE


def seeds_needed(base: np.ndarray, cell: np.ndarray, margin: float, *,
                 paired: bool = False) -> int | None:
    """Smallest n (>= 2) deciding at 80% power if the observed gap and spreads were the
    truth (`power.seeds_for_power`, the rule behind `seeds_to_decide`); paired: on the
    per-seed differences."""
    if paired:
        k = min(len(base), len(cell))
        d = base[:k] - cell[:k]
        gap, var_b, var_c = float(d.mean()), float(d.var(ddof=1)), 0.0
    else:
        gap = float(base.mean() - cell.mean())
        var_b, var_c = float(base.var(ddof=1)), float(cell.var(ddof=1))
    if var_b + var_c == 0:
        return 2  # no spread: the gap is known exactly
    return seeds_for_power(gap, var_b, var_c, margin=margin, confidence=CONFIDENCE,
                           more_than=1)


def accuracies(outcome, *, last: int) -> dict[tuple, dict[int, float]]:
    """(batch, ghost) -> seed -> accuracy: the final epoch's, or the mean of the last `last`."""
    trials, epochs = outcome.trials, outcome.epochs
    out: dict[tuple, dict[int, float]] = {}
    for row in trials[trials["outcome"] == "completed"].itertuples():
        ghost = None if pd.isna(row.ghost_batch_size) else int(row.ghost_batch_size)
        key = ("baseline",) if row.is_baseline else (int(row.batch_size), ghost)
        if last == 1:
            value = float(row.test_acc)
        else:
            curve = epochs[epochs["trial_id"] == row.trial_id].sort_values("epoch")
            value = float(curve["test_acc"].tail(last).mean())
        out.setdefault(key, {})[int(row.seed)] = value
    return out


def run(workload: str, args, tmp: str) -> tuple[object, float]:
    argv = ["--workload", workload, "--seeds", str(args.seeds),
            "--batch-sizes", args.batch_sizes, "--quiet"]
    if args.epochs:
        argv += ["--epochs", str(args.epochs), "--baseline-epochs", str(args.epochs)]
    study = ghost_size.build(ghost_size.parser().parse_args(argv))
    options = RunOptions(storage_path=f"{tmp}/{workload}", tracking_uri=f"sqlite:///{tmp}/m.db",
                         device="cpu", quiet=True, data_dir=args.data_dir)
    start = time.perf_counter()
    outcome = run_study(study, options=options)
    return outcome, time.perf_counter() - start


def text(n: int | None, have: int) -> str:
    if n is None:
        return f">{MAX_N}"
    return f"≤ {have}" if n <= have else str(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--batch-sizes", default="128,512,2048")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    p.add_argument("--data-dir", default=None, help="where MNIST-1D is cached")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, small_wall = run("mnist1d-cnn", args, tmp)
        big, big_wall = run("mnist1d-cnn-10k", args, tmp)
    views = {
        "final": accuracies(small, last=1),
        "10k": accuracies(big, last=1),
        "last3": accuracies(small, last=3),
        "last3 10k": accuracies(big, last=3),
    }
    print(f"commit: {git_commit()}; ghost_size grid, batch sizes {args.batch_sizes}, "
          f"{args.seeds} seeds a cell, margin {args.margin:g}, epochs "
          f"{args.epochs or 'the workload base'}; wall {small_wall:.0f} s (2k test) and "
          f"{big_wall:.0f} s (10k test)")
    print()
    cols = [*views, "paired"]
    print("| cell (B, ghost) | gap, final (pts) | gap, 10k (pts) | sd cell final / 10k | "
          + " | ".join(cols) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(cols))
    needed: dict[str, list[float]] = {c: [] for c in cols}
    for key in sorted((k for k in views["final"] if k != ("baseline",)),
                      key=lambda k: (k[0], math.inf if k[1] is None else k[1])):
        base = views["final"][("baseline",)]
        cell = views["final"][key]
        gap = np.mean(list(base.values())) - np.mean(list(cell.values()))
        row = []
        for name, view in views.items():
            b = np.array([view[("baseline",)][s] for s in sorted(view[("baseline",)])])
            c = np.array([view[key][s] for s in sorted(view[key])])
            n = seeds_needed(b, c, args.margin) if len(b) > 1 and len(c) > 1 else None
            needed[name].append(math.inf if n is None else n)
            row.append(text(n, args.seeds))
        shared = sorted(set(base) & set(cell))
        b = np.array([base[s] for s in shared])
        c = np.array([cell[s] for s in shared])
        n = seeds_needed(b, c, args.margin, paired=True) if len(shared) > 1 else None
        needed["paired"].append(math.inf if n is None else n)
        row.append(text(n, args.seeds))
        ghost = "BN" if key[1] is None else key[1]
        big = views["10k"]
        gap_big = (np.mean(list(big[("baseline",)].values()))
                   - np.mean(list(big[key].values())))
        spreads = (f"{np.std(list(cell.values()), ddof=1):.2f} / "
                   f"{np.std(list(big[key].values()), ddof=1):.2f}")
        print(f"| {key[0]}, {ghost} | {gap:+.2f} | {gap_big:+.2f} | {spreads} | "
              + " | ".join(row) + " |")
    print("| median over cells | | | | " + " | ".join(
        f"{np.median(v):g}" for v in needed.values()) + " |")
    print()
    for name, view in (("final", views["final"]), ("10k", views["10k"])):
        base = list(view[("baseline",)].values())
        print(f"baseline ({name}): {np.mean(base):.2f} ± {np.std(base, ddof=1):.2f} over "
              f"{len(base)} seeds")
    print("Seeds a side to decide at 80% power, one look (90% interval); lower is better.")


if __name__ == "__main__":
    main()
