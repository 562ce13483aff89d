"""Training-step time of Ghost BatchNorm against plain BatchNorm and the authors' method.

Ghost BatchNorm (Hoffer, Hubara & Soudry, NeurIPS 2017) is only worth using if it costs about
what BatchNorm costs. For two small nets this measures, side by side in one run, the time of
one training step (forward + backward + SGD step, median of N repeats after a warm-up,
the variants interleaved so that machine noise hits them alike):

  (a) plain BatchNorm over the whole batch;
  (b) `tunegap.gbn` (vectorized Ghost BatchNorm: one pass of the model);
  (c) the chunked reference, the authors' code (github.com/eladhoffer/bigBatch): split the
      batch into ghost batches, forward + backward each through the whole model (each chunk
      updates the running statistics in turn), accumulate gradients, one optimizer step.

    python benchmarks/gbn_speed.py [--device cpu|cuda] [--repeats N] [--batch-size 4096]

Other processes on a small machine distort timings: run it more than once.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _provenance import print_header
from torch import Tensor, nn

from tunegap.gbn import convert_to_ghost_bn

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


def whole_batch_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    """One training step on the whole batch (plain BN, or GBN inside the layers)."""
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def chunked_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, ghost: int
) -> None:
    """The authors' Ghost BN: forward + backward per ghost batch, gradients summed to the
    mean over the whole batch, one optimizer step."""
    opt.zero_grad(set_to_none=True)
    n = x.shape[0]
    for xc, yc in zip(torch.split(x, ghost), torch.split(y, ghost), strict=True):
        (F.cross_entropy(model(xc), yc) * (xc.shape[0] / n)).backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setup(
    make_model: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    ghost: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    min_time: float,
) -> dict[str, list[float]]:
    """Seconds per training step for each variant, interleaved repeat by repeat.

    Fast setups get more repeats (up to `min_time` seconds per variant, at most 200) so
    that their medians are not a handful of noisy millisecond timings."""
    torch.manual_seed(0)
    base = make_model().to(device)
    x = torch.randn(*input_shape, device=device)
    y = torch.randint(0, 10, (input_shape[0],), device=device)

    models = {
        "BatchNorm": copy.deepcopy(base),
        "GhostBN (vectorized)": convert_to_ghost_bn(copy.deepcopy(base), ghost),
        "chunked (authors')": copy.deepcopy(base),
    }
    steps: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if name.startswith("chunked"):
            steps[name] = lambda m=model, o=opt: chunked_step(m, o, x, y, ghost)
        else:
            steps[name] = lambda m=model, o=opt: whole_batch_step(m, o, x, y)

    def timed(step: Callable[[], None]) -> float:
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        return time.perf_counter() - t0

    slowest = 0.0
    for _ in range(warmup):
        slowest = max([slowest, *(timed(step) for step in steps.values())])
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
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument(
        "--min-time",
        type=float,
        default=2.0,
        help="fast setups repeat until about this many seconds per variant",
    )
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    repeats = args.repeats if args.repeats is not None else (4 if device.type == "cpu" else 20)
    batch = args.batch_size

    print_header(device)
    print(
        f"timing:  median of >= {repeats} steps (fast setups: ~{args.min_time:g} s per variant) "
        f"after {args.warmup} warm-up, variants interleaved"
    )
    one_d = "tunegap.models.cnn1d.CNN1d" if _ProjectCNN1d is not None else "local 3-layer Conv1d"
    setups = [
        ("conv2d CIFAR", conv_net_2d, (batch, 3, 32, 32), 128),
        ("conv1d MNIST-1D", conv_net_1d, (batch, 1, 40), 32),
    ]
    print(f"nets:    conv2d = 3x(Conv2d+BN+ReLU) 3-32-64-64 + pool + linear; conv1d = {one_d}")
    print("ratios:  'vs BN' = median / BatchNorm's median; '(min)' = best / BatchNorm's best")
    print()
    header = (
        f"{'setup':<16} {'batch':>6} {'ghost':>6}  {'variant':<21} {'steps':>5} "
        f"{'median ms':>10} {'min ms':>9} {'vs BN':>6} {'(min)':>6}"
    )
    print(header)
    print("-" * len(header))
    for label, make, shape, ghost in setups:
        times = time_setup(make, shape, ghost, device, repeats, args.warmup, args.min_time)
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
