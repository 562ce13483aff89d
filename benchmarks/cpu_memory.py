"""CPU epoch time with glibc's default malloc against freed memory kept (`tunegap.cpu_memory`).

The engine keeps freed CPU memory in the process (`keep_freed_memory`), since otherwise a
large batch maps its activations afresh each step and faults in every page. This measures
what that buys, side by side in one run: for each batch size, two fresh processes train the
same workload on the CPU, one with `TUNEGAP_SYSTEM_MALLOC=1` (glibc as it is) and one
without, alternating, and report the median epoch time, the kernel (`sys`) time and the
minor page faults per epoch.

    python benchmarks/cpu_memory.py [--workload mnist1d-cnn] [--batch-sizes 256,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from _provenance import print_header

from tunegap.config import TrialConfig
from tunegap.cpu_memory import OPT_OUT_VARIABLE, keeps_freed_memory
from tunegap.train import Engine

MODES = {"glibc default": "1", "freed memory kept": "0"}


def child(workload: str, batch_size: int, epochs: int, ghost: int | None) -> None:
    """Train `epochs` timed epochs after one warm-up epoch; print one JSON line."""
    torch.set_num_threads(1)  # as a trial does (1 CPU per trial)
    config = TrialConfig(workload=workload, batch_size=batch_size, epochs=epochs + 1,
                         device="cpu", ghost_batch_size=ghost)
    engine = Engine(config)
    engine.train_epoch()
    seconds, sys_seconds, faults = [], [], []
    for _ in range(epochs):
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        engine.train_epoch()
        seconds.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        sys_seconds.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    print(json.dumps({"kept": keeps_freed_memory(), "seconds": seconds,
                      "sys": sys_seconds, "faults": faults}))


def run_child(mode: str, workload: str, batch_size: int, epochs: int, ghost: int | None) -> dict:
    env = dict(os.environ, **{OPT_OUT_VARIABLE: MODES[mode]})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", workload, str(batch_size), str(epochs),
         str(ghost or 0)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="mnist1d-cnn")
    parser.add_argument("--batch-sizes", default="256,2048")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per process")
    parser.add_argument("--ghost-batch-size", type=int, default=32,
                        help="Ghost BatchNorm where the batch is larger (0: plain BatchNorm)")
    parser.add_argument("--rounds", type=int, default=2, help="process pairs per batch size")
    args = parser.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r} is not allowed: use integers, "
                     "comma-separated")
    if any(b <= 0 for b in batch_sizes) or args.epochs <= 0 or args.rounds <= 0:
        parser.error("--batch-sizes, --epochs and --rounds must be positive")
    if args.ghost_batch_size < 0:
        parser.error(f"--ghost-batch-size {args.ghost_batch_size} is not allowed: use >= 0")

    print_header(torch.device("cpu"))
    print(f"setup:   {args.workload}, fp32, ghost batch {args.ghost_batch_size or 'none'} where "
          f"the batch is larger, 1 torch thread per process; "
          f"{args.rounds} process pairs x {args.epochs} epochs after a warm-up epoch")
    print("ratio:   glibc default's median epoch / freed memory kept's")
    print()
    header = (f"{'batch':>6}  {'malloc':<18} {'epoch s':>8} {'sys s':>7} {'faults':>8} "
              f"{'ratio':>6}")
    print(header)
    print("-" * len(header))
    for batch in batch_sizes:
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        ghost = args.ghost_batch_size if 0 < args.ghost_batch_size < batch else None
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(run_child(mode, args.workload, batch, args.epochs, ghost))
        medians = {}
        for mode, results in runs.items():
            if results[0]["kept"] != (MODES[mode] == "0"):
                raise SystemExit(f"{mode}: freed memory kept = {results[0]['kept']}")
            seconds = [s for r in results for s in r["seconds"]]
            medians[mode] = statistics.median(seconds)
            sys_s = statistics.median(s for r in results for s in r["sys"])
            faults = statistics.median(f for r in results for f in r["faults"])
            ratio = medians["glibc default"] / medians[mode]
            print(f"{batch:>6}  {mode:<18} {medians[mode]:>8.3f} {sys_s:>7.3f} {faults:>8.0f} "
                  f"{ratio:>5.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) or None)
    else:
        main()
