"""What the frontier's fixed sequences save: its trial-epochs against the full grid's, same answer?

    python benchmarks/frontier_cost.py                                  # 256,512 at 2 epochs
    python benchmarks/frontier_cost.py --batch-sizes 256,1024 --epochs 4 --max-seeds 3

Runs, one after the other on the same Ray (fresh storage and MLflow in a temporary folder):
1. the `frontier` study (bisection over whole regime multipliers, seeds until decided), and
2. the full grid of the same batch sizes and every whole multiplier from 1 to matched, with
   `--max-seeds` seeds per cell (what deciding every cell without adaptivity costs),
and prints side by side the trial-epochs each spent (the sum over trials of the epochs they
trained, baseline included), the ratio, and each one's closing multiplier per batch size.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

from _provenance import git_commit

from tunegap import RunOptions, Study, run_study
from tunegap.studies import frontier
from tunegap.workloads import get_workload


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", default="256,512")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--max-seeds", type=int, default=3)
    p.add_argument("--workload", default="mnist1d-cnn")
    args = p.parse_args()
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    b0 = get_workload(args.workload).regime.base_batch_size

    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(storage_path=f"{tmp}/results", tracking_uri=f"sqlite:///{tmp}/m.db",
                             device="cpu", quiet=True)
        cli = ["--workload", args.workload, "--batch-sizes", args.batch_sizes, "--epochs",
               str(args.epochs), "--baseline-epochs", str(args.epochs), "--margin", str(args.margin), "--max-seeds", str(args.max_seeds),
               "--min-seeds", str(min(3, args.max_seeds))]
        bisect = frontier.build(frontier.parser().parse_args(cli))
        started = time.perf_counter()
        adaptive = run_study(bisect, options=options)
        adaptive_wall = time.perf_counter() - started

        points = tuple(
            {"batch_size": b, "ghost_batch_size": b0, "lr_exponent": 0.5,
             "regime_multiplier": float(m)}
            for b in batch_sizes for m in range(1, math.ceil(b / b0) + 1)
        )
        grid = Study(name="frontier_grid", workload=args.workload, points=points,
                     seeds=args.max_seeds, epochs=args.epochs,
                     baseline_epochs=args.epochs, margin=args.margin,
                     instruments=dict(bisect.instruments))
        started = time.perf_counter()
        full = run_study(grid, options=options)
        grid_wall = time.perf_counter() - started

    mine = frontier.frontier_table(adaptive.cells, adaptive.trials, adaptive.epochs)
    theirs = frontier.frontier_table(full.cells, full.trials, full.epochs)
    spent = int(adaptive.trials["epochs_done"].sum())
    grid_spent = int(full.trials["epochs_done"].sum())
    print(f"\nfrontier vs full grid | {args.workload} B={args.batch_sizes} epochs={args.epochs} "
          f"margin={args.margin} max seeds={args.max_seeds} | commit {git_commit()} | "
          f"python {sys.version.split()[0]}")
    print("| | trials | trial-epochs | wall (s) |")
    print("|---|---:|---:|---:|")
    print(f"| frontier (fixed sequences) | {len(adaptive.trials)} | {spent} | {adaptive_wall:.0f} |")
    print(f"| full grid | {len(full.trials)} | {grid_spent} | {grid_wall:.0f} |")
    print(f"| ratio (frontier / grid) | | {spent / grid_spent:.2f}x | "
          f"{adaptive_wall / grid_wall:.2f}x |")
    print("\n| B | closing multiplier, frontier | closing multiplier, full grid | same |")
    print("|---:|---:|---:|---|")
    for a, g in zip(mine.itertuples(), theirs.itertuples(), strict=True):
        same = (a.smallest_closed_multiplier == g.smallest_closed_multiplier
                or (math.isnan(a.smallest_closed_multiplier) and math.isnan(g.smallest_closed_multiplier)))
        print(f"| {a.batch_size} | {a.smallest_closed_multiplier:g} | {g.smallest_closed_multiplier:g} | "
              f"{'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
