"""Elementwise kernels with mixed bf16/fp32 operands against the same ops in one dtype.

Ghost BatchNorm can keep a bf16 activation in bf16 (`tunegap.gbn.KEEP_BF16`), which halves
the bytes it moves but needs kernels that read bf16 and fp32 operands together (per-channel
fp32 statistics against a bf16 tensor). That only pays if the device runs such kernels at
about the speed of same-dtype ones. This measures the premise, side by side in one run, on an
activation of ResNet-44's first stage at batch 4096 viewed as [ghosts, ghost, C, H*W], the
way the layer sees it:

  - ``sub``:     bf16 tensor minus fp32 per-(ghost, channel) mean, written to fp32;
  - ``addcmul``: fp32 shift + bf16 tensor * fp32 scale, written to bf16 (the normalization);
  - ``sum``:     reduction of a bf16 tensor accumulated in fp32;
  - ``to fp32``: the copy the other way makes instead.

Each is compared with the same op on fp32 operands (the "copied" way's kernels); "GB/s"
counts the bytes the op must read and write.

    python benchmarks/mixed_dtype.py [--device cpu|cuda] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _device import device_or_exit, sync
from _provenance import print_header


def median_seconds(op: Callable[[], object], device: torch.device, repeats: int) -> float:
    op()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        op()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="default 4096 (CPU 1024)")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="height = width")
    parser.add_argument("--ghost", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (CUDA 50)")
    args = parser.parse_args(argv)
    device = device_or_exit(parser, args.device)
    on_cuda = device.type == "cuda"
    batch = args.batch_size or (4096 if on_cuda else 1024)
    repeats = args.repeats or (50 if on_cuda else 5)
    if batch % args.ghost:
        parser.error(f"--batch-size {batch} is not allowed: use a multiple of --ghost")

    c, hw, ghosts = args.channels, args.size * args.size, batch // args.ghost
    shape = (ghosts, args.ghost, c, hw)
    x16 = torch.randn(batch, c, args.size, args.size, device=device).bfloat16()
    x16 = x16.view(batch, c, hw).view(shape)
    x32 = x16.float()
    stat = torch.randn(ghosts, 1, c, 1, device=device)
    out32 = torch.empty(shape, device=device)
    out16 = torch.empty(shape, device=device, dtype=torch.bfloat16)
    n = x16.numel()

    # name -> (mixed-dtype op, bytes it moves, same op in fp32, bytes that one moves)
    ops: dict[str, tuple[Callable[[], object], int, Callable[[], object], int]] = {
        "sub": (
            lambda: torch.sub(x16, stat, out=out32), 6 * n,
            lambda: torch.sub(x32, stat, out=out32), 8 * n,
        ),
        "addcmul": (
            lambda: torch.addcmul(stat, x16, stat, out=out16), 4 * n,
            lambda: torch.addcmul(stat, x32, stat, out=out32), 8 * n,
        ),
        "sum": (
            lambda: x16.sum((1, 3), dtype=torch.float32), 2 * n,
            lambda: x32.sum((1, 3)), 4 * n,
        ),
        "to fp32": (lambda: x16.float(), 6 * n, lambda: x32.clone(), 8 * n),
    }

    print_header(device)
    print(f"tensor:  [{ghosts}, {args.ghost}, {c}, {hw}] ({batch}x{c}x{args.size}x{args.size}), "
          f"median of {repeats}")
    print("ratio:   time of the mixed-dtype op / time of the same op in fp32")
    print()
    header = (f"{'op':<9} {'mixed ms':>9} {'GB/s':>7} {'fp32 ms':>9} {'GB/s':>7} "
              f"{'ratio':>6}")
    print(header)
    print("-" * len(header))
    for name, (mixed, mixed_bytes, same, same_bytes) in ops.items():
        t_mixed = median_seconds(mixed, device, repeats)
        t_same = median_seconds(same, device, repeats)
        print(f"{name:<9} {t_mixed * 1e3:>9.2f} {mixed_bytes / t_mixed / 1e9:>7.1f} "
              f"{t_same * 1e3:>9.2f} {same_bytes / t_same / 1e9:>7.1f} "
              f"{t_mixed / t_same:>5.2f}x")


if __name__ == "__main__":
    main()
