"""CPU training time and memory under each way glibc may treat freed memory (`tunegap.cpu_memory`).

The engine makes glibc reuse freed CPU memory (TUNEGAP_CPU_MALLOC: "cached" by default,
"heap", or "system" for glibc as it is), since otherwise a large batch maps its activations
afresh each step and faults in every page. This measures what each mode buys and costs,
side by side in one run, in a fresh process per mode and setup (the mode is process-wide):

  - the MNIST-1D CNN through the engine (fp32, Ghost BatchNorm 32 where the batch is
    larger), median epoch time over a few epochs after a warm-up epoch, per batch size;
  - one BatchNorm training step of a small CIFAR-sized conv net at a large batch
    (gbn_speed.py's conv2d), where single activations exceed glibc's 32 MiB mmap cap.

Each row gives the time, the kernel (`sys`) time and minor page faults per epoch or step,
and the process's peak resident memory.

    python benchmarks/cpu_memory.py [--batch-sizes 256,1024,2048,8000] [--conv2d-batch 4096]
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

from tunegap.cpu_memory import MODE_VARIABLE, MODES, applied_mode, reuse_freed_memory

ORDER = ("system", "cached", "heap")
assert set(ORDER) == set(MODES)


def _measure(step, repeats: int) -> dict:
    step()  # warm-up
    seconds, sys_seconds, faults = [], [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        sys_seconds.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    return {
        "seconds": statistics.median(seconds),
        "sys": statistics.median(sys_seconds),
        "faults": statistics.median(faults),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(setup: str, batch_size: int, repeats: int) -> None:
    """One measurement in this process, under the mode TUNEGAP_CPU_MALLOC names."""
    torch.set_num_threads(1)  # as a trial does (1 CPU per trial)
    if setup == "mnist1d":
        from tunegap.config import TrialConfig
        from tunegap.engine import Engine

        config = TrialConfig(workload="mnist1d-cnn", batch_size=batch_size, epochs=repeats + 1,
                             device="cpu", ghost_batch_size=32 if batch_size > 32 else None)
        engine = Engine(config)  # sets the mode, as in a trial
        result = _measure(engine.train_epoch, repeats)
    else:
        from gbn_speed import conv_net_2d, whole_batch_step

        reuse_freed_memory()
        torch.manual_seed(0)
        model = conv_net_2d()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch_size, 3, 32, 32)
        y = torch.randint(0, 10, (batch_size,))
        result = _measure(lambda: whole_batch_step(model, opt, x, y), repeats)
    result["mode"] = applied_mode()  # None if the engine never set it
    print(json.dumps(result))


def run_child(mode: str, setup: str, batch_size: int, repeats: int) -> dict:
    env = dict(os.environ, **{MODE_VARIABLE: mode})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", setup, str(batch_size), str(repeats)],
        capture_output=True, text=True, env=env, check=False,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["mode"] != mode:
        raise SystemExit(f"asked for {mode}, the process ran with {result['mode']}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="256,1024,2048,8000",
                        help="MNIST-1D batch sizes (empty: skip)")
    parser.add_argument("--epochs", type=int, default=5, help="timed MNIST-1D epochs")
    parser.add_argument("--conv2d-batch", type=int, default=4096, help="0: skip the conv net")
    parser.add_argument("--steps", type=int, default=3, help="timed conv-net steps")
    args = parser.parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r} is not allowed: use integers, "
                     "comma-separated")
    if any(b <= 0 for b in batch_sizes) or args.epochs <= 0 or args.steps <= 0:
        parser.error("--batch-sizes, --epochs and --steps must be positive")
    if args.conv2d_batch < 0:
        parser.error(f"--conv2d-batch {args.conv2d_batch} is not allowed: use >= 0")

    print_header(torch.device("cpu"))
    print("setup:   1 torch thread per process, a fresh process per row")
    print("ratio:   'system' time / the row's time (higher is faster)")
    print()
    header = (f"{'setup':<16} {'batch':>6}  {'mode':<7} {'seconds':>8} {'sys s':>7} "
              f"{'faults':>8} {'peak MB':>8} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    setups = [("mnist1d epoch", "mnist1d", b, args.epochs) for b in batch_sizes]
    if args.conv2d_batch:
        setups.append(("conv2d BN step", "conv2d", args.conv2d_batch, args.steps))
    for label, setup, batch, repeats in setups:
        results = {mode: run_child(mode, setup, batch, repeats) for mode in ORDER}
        base = results["system"]["seconds"]
        for mode, r in results.items():
            print(f"{label:<16} {batch:>6}  {mode:<7} {r['seconds']:>8.3f} {r['sys']:>7.3f} "
                  f"{r['faults']:>8.0f} {r['peak_mb']:>8.0f} {base / r['seconds']:>5.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
