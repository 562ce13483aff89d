"""Table 1 of the paper on one machine, without Ray or MLflow: SB, LB, +LR, +GBN, +RA.

    python -m tunegap.table1_quick --seeds 3

Each remedy is added to the previous column (LB+LR, LB+LR+GBN, LB+LR+GBN+RA). Prints a
markdown table of final test accuracy (mean ± std over seeds) and the gap to SB. For the
Ray Tune / MLflow version use `python -m tunegap.studies.table1`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from tunegap.cli import OneLineParser, add_plugin_option, import_plugins, positive_int
from tunegap.config import TrialConfig
from tunegap.engine import Engine, load_workload_data
from tunegap.remedies import table1_rows
from tunegap.workloads import get_workload


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
    results: list[list[float]] = []
    for (label, _), seeds in zip(rows, configs, strict=True):
        accs = []
        for config in seeds:
            started = time.perf_counter()
            engine = Engine(config, data=data)
            last = engine.run()[-1]
            accs.append(last["test_acc"])
            print(f"# {label:5s} seed {config.seed}: test_acc {last['test_acc']:.2f} "
                  f"({'diverged' if engine.diverged else 'completed'}, "
                  f"{last['updates']} updates, {time.perf_counter() - started:.0f}s)",
                  file=sys.stderr, flush=True)
        results.append(accs)
    sb = statistics.fmean(results[0])
    print(f"| {workload.name} | B | ghost | lr | epochs | updates | test acc (%) | gap |")
    print("|---|---|---|---|---|---|---|---|")
    for (label, _), seeds, accs in zip(rows, configs, results, strict=True):
        c = seeds[0]
        r = c.regime().resolve(c.batch_size, train_size=data.train_size)
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        mean = statistics.fmean(accs)
        print(f"| {label} | {c.batch_size} | {c.ghost_batch_size or 'BN'} | {r.lr:.3g} | "
              f"{r.epochs} | {r.total_updates} | {mean:.2f}{spread} | {sb - mean:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
