"""Table 1 of the paper on one machine, without Ray or MLflow: SB, LB, +LR, +GBN, +RA.

    python -m tunegap.table1_quick --seeds 3

Each remedy is added to the previous column (LB+LR, LB+LR+GBN, LB+LR+GBN+RA). Prints a
markdown table of final test accuracy (mean ± std over seeds), the gap to SB, the mean
best-epoch accuracy (the authors' code reports that one), and the paper's own numbers for
the workload where the paper has a row (`Workload.paper_table1`). For the
Ray Tune / MLflow version use `python -m tunegap.studies.table1`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from tunegap.cli import OneLineParser, add_plugin_option, import_plugins
from tunegap.cli_values import positive_int
from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.remedies import TABLE1_COLUMNS, table1_rows
from tunegap.trial_data import load_workload_data
from tunegap.workloads import Workload, get_workload


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m tunegap.table1_quick", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="mnist1d-cnn")
    p.add_argument("--seeds", type=positive_int("--seeds"), default=1)
    p.add_argument("--large-batch-size", type=positive_int("--large-batch-size"), default=None)
    p.add_argument("--epochs", type=positive_int("--epochs"), default=None,
                   help="override the base epochs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", default=None)
    add_plugin_option(p)
    args = p.parse_args(argv)
    import_plugins(p.prog, args)
    try:
        workload = get_workload(args.workload)
        rows = table1_rows(workload, large_batch_size=args.large_batch_size)
        configs = [
            [TrialConfig(**kw, seed=s, epochs=args.epochs, device=args.device,
                         data_dir=args.data_dir) for s in range(args.seeds)]
            for _, kw in rows
        ]
    except ValueError as err:
        p.error(str(err))
    data = load_workload_data(configs[0][0])
    finals: list[list[float]] = []
    bests: list[list[float]] = []
    for (label, _), seeds in zip(rows, configs, strict=True):
        final, best = [], []
        for config in seeds:
            started = time.perf_counter()
            engine = Engine(config, data=data)
            history = engine.run()
            last = history[-1]
            final.append(last["test_acc"])
            # The authors' code reports the best epoch (best_prec1), not the last one.
            best.append(max(m["test_acc"] for m in history))
            print(f"# {label:5s} seed {config.seed}: test_acc {last['test_acc']:.2f} "
                  f"(best epoch {best[-1]:.2f}; "
                  f"{'diverged' if engine.diverged else 'completed'}, "
                  f"{last['updates']} updates, {time.perf_counter() - started:.0f}s)",
                  file=sys.stderr, flush=True)
        finals.append(final)
        bests.append(best)
    print("\n".join(table_lines(workload, configs, finals, bests, train_size=data.train_size)))
    return 0


def table_lines(
    workload: Workload,
    configs: Sequence[Sequence[TrialConfig]],
    finals: Sequence[Sequence[float]],
    bests: Sequence[Sequence[float]],
    *,
    train_size: int,
) -> list[str]:
    """The markdown table (one row per Table 1 column, the paper's numbers beside ours) and
    the lines that say what its numbers are."""
    paper = workload.paper_table1
    sb = statistics.fmean(finals[0])
    lines = [
        f"| {workload.name} | B | ghost | lr | epochs | updates | test acc (%), final | gap "
        "| best epoch | paper | paper gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, seeds, final, best in zip(TABLE1_COLUMNS, configs, finals, bests, strict=True):
        c = seeds[0]
        r = c.regime().resolve(c.batch_size, train_size=train_size)
        spread = f" ± {statistics.stdev(final):.2f}" if len(final) > 1 else ""
        mean = statistics.fmean(final)
        theirs = f"{paper[label]:.2f} | {paper.gap(label):+.2f}" if paper else "- | -"
        lines.append(
            f"| {label} | {c.batch_size} | {c.ghost_batch_size or 'BN'} | {r.lr:.3g} | "
            f"{r.epochs} | {r.total_updates} | {mean:.2f}{spread} | {sb - mean:+.2f} | "
            f"{statistics.fmean(best):.2f} | {theirs} |"
        )
    lines.append("")
    lines.append(f"paper: {paper.source}" if paper else
                 f"paper: no Table 1 row exists for {workload.name}")
    lines.append(
        f"final = last epoch, mean ± std over {len(finals[0])} seed(s); best epoch = the mean "
        "of each seed's best epoch (what the authors' code reports); gap = SB - column"
    )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
