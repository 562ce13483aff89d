"""Training-step time of Ghost BatchNorm against plain BatchNorm and the authors' method.

Ghost BatchNorm (Hoffer, Hubara & Soudry, NeurIPS 2017) is only worth using if it costs about
what BatchNorm costs. For ResNet-44 (the paper's CIFAR network, batch 4096, ghost 128) and
two small nets this measures, side by side in one run, the time of one training step (forward + backward + SGD step, median of N repeats after a warm-up,
the variants interleaved so that machine noise hits them alike):

  (a) plain BatchNorm over the whole batch;
  (b) `tunegap.gbn` (vectorized Ghost BatchNorm: one pass of the model);
  (c) the chunked reference, the authors' code (github.com/eladhoffer/bigBatch): split the
      batch into ghost batches, forward + backward each through the whole model (each chunk
      updates the running statistics in turn), accumulate gradients, one optimizer step.

    python benchmarks/gbn_speed.py [--device cpu|cuda] [--repeats N] [--batch-size 4096]
    python benchmarks/gbn_speed.py --device cuda --bf16 --channels-last   # the GPU path
    python benchmarks/gbn_speed.py --nets resnet44,conv2d,conv1d          # CPU: all (10 min)

`--bf16` and `--channels-last` apply to every variant alike, as the engine does on a GPU.
With `--bf16`, (b) is timed both ways tunegap can normalize a bf16 activation (see
`tunegap.gbn.KEEP_BF16`): kept in bf16 (CUDA's default) and copied to fp32 (the CPU's).
`--compile` runs every variant through `torch.compile` (the engine's `--compile`).

Other processes on a small machine distort timings: run it more than once.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from _device import sync
from _provenance import print_header
from torch import Tensor, nn

from tunegap import gbn as gbn_module
from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models import build_model

try:  # the project's MNIST-1D model, when present and importable
    from tunegap.models.cnn1d import CNN1d as _ProjectCNN1d
except Exception:  # pragma: no cover - any failure: fall back to the same net defined here
    _ProjectCNN1d = None


def conv_net_2d() -> nn.Module:
    """Small CIFAR-sized conv net: three conv + BN + ReLU blocks, pooling, linear."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def conv_net_1d() -> nn.Module:
    """The MNIST-1D CNN: three strided Conv1d + BN + ReLU blocks (32 channels), linear."""
    if _ProjectCNN1d is not None:
        return _ProjectCNN1d()
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, stride=2, padding=2, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(inplace=True),
        nn.Conv1d(32, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(inplace=True),
        nn.Conv1d(32, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(160, 10),
    )


def resnet44() -> nn.Module:
    """ResNet-44 for CIFAR-10 as the workloads build it (tunegap.models)."""
    return build_model("resnet44", num_classes=10)


# name -> (description, model builder, input shape after the batch, ghost batch size)
NETS: dict[str, tuple[str, Callable[[], nn.Module], tuple[int, ...], int]] = {
    "resnet44": ("ResNet-44 (tunegap.models), CIFAR 3x32x32", resnet44, (3, 32, 32), 128),
    "conv2d": ("3x(Conv2d+BN+ReLU) 3-32-64-64 + pool + linear", conv_net_2d, (3, 32, 32), 128),
    "conv1d": ("the MNIST-1D CNN", conv_net_1d, (1, 40), 32),
}


def _loss(model: nn.Module, x: Tensor, y: Tensor, bf16: bool) -> Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return F.cross_entropy(model(x).float(), y)


def whole_batch_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, bf16: bool = False
) -> None:
    """One training step on the whole batch (plain BN, or GBN inside the layers)."""
    opt.zero_grad(set_to_none=True)
    _loss(model, x, y, bf16).backward()
    opt.step()


def chunked_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    ghost: int,
    bf16: bool = False,
) -> None:
    """The authors' Ghost BN: forward + backward per ghost batch, gradients summed to the
    mean over the whole batch, one optimizer step."""
    opt.zero_grad(set_to_none=True)
    n = x.shape[0]
    for xc, yc in zip(torch.split(x, ghost), torch.split(y, ghost), strict=True):
        (_loss(model, xc, yc, bf16) * (xc.shape[0] / n)).backward()
    opt.step()


def _with_bf16_way(keep: bool | None, step: Callable[[], None]) -> None:
    gbn_module.KEEP_BF16 = keep
    try:
        step()
    finally:
        gbn_module.KEEP_BF16 = None


def time_setup(
    make_model: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    ghost: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    min_time: float,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    compile_model: bool = False,
) -> dict[str, list[float]]:
    """Seconds per training step for each variant, interleaved repeat by repeat.

    Fast setups get more repeats (up to `min_time` seconds per variant, at most 200) so
    that their medians are not a handful of noisy millisecond timings."""
    torch.manual_seed(0)
    base = make_model().to(device)
    x = torch.randn(*input_shape, device=device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (input_shape[0],), device=device)

    # variant -> (model, how GBN treats a bf16 input: tunegap.gbn.KEEP_BF16)
    variants: dict[str, tuple[nn.Module, bool | None]] = {"BatchNorm": (copy.deepcopy(base), None)}
    if bf16:
        for label, keep in (("GhostBN (bf16 kept)", True), ("GhostBN (bf16->fp32)", False)):
            variants[label] = (convert_to_ghost_bn(copy.deepcopy(base), ghost), keep)
    else:
        variants["GhostBN (vectorized)"] = (convert_to_ghost_bn(copy.deepcopy(base), ghost), None)
    variants["chunked (authors')"] = (copy.deepcopy(base), None)
    steps: dict[str, Callable[[], None]] = {}
    for name, (model, keep) in variants.items():
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        run = torch.compile(model) if compile_model else model
        if name.startswith("chunked"):
            step = partial(chunked_step, run, opt, x, y, ghost, bf16)
        else:
            step = partial(whole_batch_step, run, opt, x, y, bf16)
        steps[name] = partial(_with_bf16_way, keep, step)

    def timed(step: Callable[[], None]) -> float:
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        return time.perf_counter() - t0

    # The last warm-up round sizes the repeats: earlier ones include compiling and tuning.
    slowest = 0.0
    for _ in range(warmup):
        slowest = max(timed(step) for step in steps.values())
    if slowest > 0:
        repeats = max(repeats, min(200, int(min_time / slowest)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed steps per variant (default 4 on CPU, 20 on CUDA)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per variant (at least 2 compiled)"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=2.0,
        help="fast setups repeat until about this many seconds per variant",
    )
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--nets",
        default=None,
        help=f"comma-separated, of {', '.join(NETS)} (default all on CUDA; on CPU the two "
        "small nets, since a ResNet-44 step at batch 4096 takes about a minute on two cores)",
    )
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--channels-last", action="store_true", help="for the 2D nets")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile every variant (slow warm-up)"
    )
    args = parser.parse_args(argv)
    if args.nets is None:
        args.nets = ",".join(NETS) if args.device == "cuda" else "conv2d,conv1d"
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown or not nets:
        parser.error(f"--nets {args.nets!r} is not allowed: use names of {', '.join(NETS)}")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    repeats = args.repeats if args.repeats is not None else (4 if device.type == "cpu" else 20)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the engine trains; the warm-up tunes
    batch = args.batch_size
    warmup = max(args.warmup, 2 if args.compile else 1)

    print_header(device)
    print(
        f"timing:  median of >= {repeats} steps (fast setups: ~{args.min_time:g} s per variant) "
        f"after {warmup} warm-up, variants interleaved"
    )
    print(
        f"options: bf16={args.bf16} channels_last={args.channels_last} compile={args.compile}"
    )
    for name in nets:
        print(f"net:     {name} = {NETS[name][0]}")
    print("ratios:  'vs BN' = median / BatchNorm's median; '(min)' = best / BatchNorm's best")
    print()
    header = (
        f"{'net':<16} {'batch':>6} {'ghost':>6}  {'variant':<21} {'steps':>5} "
        f"{'median ms':>10} {'min ms':>9} {'vs BN':>6} {'(min)':>6}"
    )
    print(header)
    print("-" * len(header))
    for label in nets:
        _, make, sample_shape, ghost = NETS[label]
        times = time_setup(
            make,
            (batch, *sample_shape),
            ghost,
            device,
            repeats,
            warmup,
            args.min_time,
            bf16=args.bf16,
            channels_last=args.channels_last and len(sample_shape) == 3,
            compile_model=args.compile,
        )
        ref = statistics.median(times["BatchNorm"])
        ref_min = min(times["BatchNorm"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(
                f"{label:<16} {batch:>6} {ghost:>6}  {name:<21} {len(ts):>5} {med * 1e3:>10.1f} "
                f"{min(ts) * 1e3:>9.1f} {med / ref:>5.2f}x {min(ts) / ref_min:>5.2f}x"
            )


if __name__ == "__main__":
    main()
