"""Epoch time of ResNet-44 on CIFAR-shaped data at a small and a large batch size.

The training step of `tunegap.engine.Engine` (SGD momentum 0.9, weight decay 1e-4, cross
entropy, gradient-norm clipping at 5, the on-device crop/flip augmentation, data resident on
the device), timed over one epoch of `--samples` random 3x32x32 images after a warm-up
epoch, at each batch size of `--batch-sizes` (default 128 and 4096 on CUDA; two CPU cores
train it at a few dozen images/s, hence the small CPU defaults). The table gives
seconds per measured epoch, images/s, the time a 50,000-image CIFAR epoch would take at
that rate, and the achieved TFLOP/s as a fraction of the device's matmul peak measured in
the same run (bf16 with `--bf16`, else float32, or TF32 on CUDA where cuDNN uses it; FLOPs of the step counted by torch's
FlopCounterMode: convolutions and matmuls, forward and backward). Options: `--bf16` (autocast to bfloat16), `--channels-last`, `--compile`
(torch.compile the model), `--ghost-batch-size` (Ghost BatchNorm, e.g. 128).

    python benchmarks/epoch_time.py                      # CPU: 256 images, batches 64, 256
    python benchmarks/epoch_time.py --device cuda --bf16 --channels-last --compile

Other processes on a small machine distort timings: run it more than once.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from _device import device_or_exit, sync
from _peak import measured_matmul_tflops, peak_label, training_flops_per_image
from _provenance import print_header
from torch import nn

from tunegap.data import DeviceLoader, random_crop_flip
from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models import build_model

CIFAR_TRAIN = 50_000


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DeviceLoader,
    *,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
) -> float:
    """One training epoch as the engine runs it; returns seconds (device synchronized)."""
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if bf16
        else contextlib.nullcontext()
    )
    model.train()
    loss_sum = torch.zeros((), device=device)
    sync(device)
    started = time.perf_counter()
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        loss_sum += loss.detach().float()
    float(loss_sum)  # the engine reads its sums once per epoch
    sync(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--samples", type=int, default=None, help="images per epoch (default 256 CPU, 50000 CUDA)"
    )
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default 64,256 CPU; 128,4096 CUDA)"
    )
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--ghost-batch-size", type=int, default=None)
    parser.add_argument("--no-augment", action="store_true", help="skip the crop/flip")
    args = parser.parse_args(argv)

    device = device_or_exit(parser, args.device)
    on_cuda = device.type == "cuda"
    samples = args.samples or (CIFAR_TRAIN if on_cuda else 256)
    try:
        batch_sizes = [
            int(b) for b in (args.batch_sizes or ("128,4096" if on_cuda else "64,256")).split(",")
        ]
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of ints")
    if on_cuda:
        torch.backends.cudnn.benchmark = True

    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (samples,), generator=g).to(device)

    flops_per_image = training_flops_per_image(
        build_model("resnet44", num_classes=10), (3, 32, 32), classes=10
    )
    rows = []
    for batch in batch_sizes:
        if args.compile:
            # A fresh compile per batch size: the last, smaller batch of one run would
            # otherwise leave a dynamic-shape graph for the next.
            torch._dynamo.reset()
        torch.manual_seed(0)
        model: nn.Module = build_model("resnet44", num_classes=10)
        if args.ghost_batch_size is not None:
            model = convert_to_ghost_bn(model, args.ghost_batch_size)
        model = model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        step_model: nn.Module = torch.compile(model) if args.compile else model  # type: ignore[assignment]
        loader = DeviceLoader(
            x, y, batch_size=batch, seed=0, augment=None if args.no_augment else random_crop_flip
        )
        common = {"device": device, "bf16": args.bf16, "channels_last": args.channels_last}
        warmup = run_epoch(step_model, optimizer, loader, **common)  # compile, cudnn autotune
        seconds = run_epoch(step_model, optimizer, loader, **common)
        rows.append((batch, len(loader), warmup, seconds))
        del model, step_model, optimizer, loader
    peak_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = measured_matmul_tflops(device, peak_dtype)

    print_header(device)
    print(
        f"setup:    ResNet-44, {samples} random 3x32x32 images per epoch, "
        f"bf16={args.bf16} channels_last={args.channels_last} compile={args.compile} "
        f"ghost_batch_size={args.ghost_batch_size} augment={not args.no_augment}"
    )
    print("timing:   one epoch after one warm-up epoch (whose time is shown)")
    print(
        f"flops:    {flops_per_image / 1e9:.3f} GFLOP per image per training step; measured "
        f"{peak_label(device, peak_dtype)} matmul peak {peak:.3g} TFLOP/s"
    )
    print()
    header = (
        f"{'batch':>6} {'updates':>8} {'warm-up s':>10} {'epoch s':>9} {'images/s':>10} "
        f"{'50k-epoch s':>12} {'TFLOP/s':>8} {'of peak':>8}"
    )
    print(header)
    print("-" * len(header))
    for batch, updates, warmup, seconds in rows:
        rate = samples / seconds
        achieved = rate * flops_per_image / 1e12
        print(
            f"{batch:>6} {updates:>8} {warmup:>10.2f} {seconds:>9.2f} {rate:>10,.0f} "
            f"{CIFAR_TRAIN / rate:>12.1f} {achieved:>8.2f} {achieved / peak:>8.1%}"
        )


if __name__ == "__main__":
    main()
