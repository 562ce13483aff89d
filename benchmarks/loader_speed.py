"""Images per second of tunegap's device-resident loader against a torch DataLoader.

CIFAR-shaped random images (3x32x32, float32), one epoch per measurement, the same
augmentation in both (random crop after zero-padding by 4, horizontal flip), side by side
in one run:

  (a) `tunegap.data.DeviceLoader` over tensors already on the device, augmenting each batch
      there with `tunegap.data.random_crop_flip` (one gather, no per-image Python);
  (b) `torch.utils.data.DataLoader` over a CPU dataset whose `__getitem__` pads, crops and
      flips one image, with `--workers` worker processes (default 4) and pinned memory,
      each batch copied to the device (non_blocking) the way a training loop would (pinned
      memory only where there is a CUDA device to copy to).

Each loader runs a warm-up epoch (workers start, CUDA initializes) before the timed epochs;
the table gives the median images/s and (b)'s time relative to (a).

    python benchmarks/loader_speed.py                          # CPU, small sizes, seconds
    python benchmarks/loader_speed.py --device cuda --samples 50000 --batch-size 4096

The comparison is made for CUDA, where (a) saves the host-to-device copy and the
per-sample Python work; on a CPU both do the same copies, (a) in one process and (b) in
several, so CPU numbers say little. Other processes on a small machine distort timings: run
it more than once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from _device import device_or_exit, sync
from _provenance import print_header
from torch.utils.data import DataLoader, Dataset

from tunegap.data import DeviceLoader, random_crop_flip


class CropFlipDataset(Dataset):
    """CPU images with the per-sample crop-and-flip a torchvision-style pipeline would do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, padding: int = 4) -> None:
        self.x, self.y, self.padding = x, y, padding

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.padding
        img = F.pad(self.x[i], (p, p, p, p))
        h, w = self.x.shape[2:]
        dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        img = img[:, dy : dy + h, dx : dx + w]
        if bool(torch.rand(()) < 0.5):
            img = img.flip(2)
        return img, self.y[i]


def time_epochs(
    epoch: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    device: torch.device,
    epochs: int,
) -> list[float]:
    """Seconds per epoch, touching every batch on the device (as training would)."""
    times = []
    for _ in range(epochs + 1):  # the first epoch is the untimed warm-up
        started = time.perf_counter()
        checksum = torch.zeros((), device=device)
        for xb, _yb in epoch():
            checksum += xb[:, 0, 0, 0].sum()
        sync(device)
        times.append(time.perf_counter() - started)
    return times[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--samples", type=int, default=None, help="images per epoch (default 4096 CPU, 50000 CUDA)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 512 CPU, 4096 CUDA")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loader")
    args = parser.parse_args(argv)

    device = device_or_exit(parser, args.device)
    on_cuda = device.type == "cuda"
    samples = args.samples or (50_000 if on_cuda else 4096)
    batch = args.batch_size or (4096 if on_cuda else 512)

    g = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(samples, 3, 32, 32, generator=g)
    y_cpu = torch.randint(0, 10, (samples,), generator=g)
    x_dev, y_dev = x_cpu.to(device), y_cpu.to(device)

    device_loader = DeviceLoader(x_dev, y_dev, batch_size=batch, seed=0, augment=random_crop_flip)
    torch_loader = DataLoader(
        CropFlipDataset(x_cpu, y_cpu),
        batch_size=batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=on_cuda,
        persistent_workers=args.workers > 0,
    )

    def torch_epoch() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in torch_loader:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    variants = [
        ("device loader + on-device crop/flip", lambda: device_loader),
        (
            f"DataLoader {args.workers} workers{', pinned' if on_cuda else ''}, per-sample",
            torch_epoch,
        ),
    ]
    results = [(name, time_epochs(run, device, args.epochs)) for name, run in variants]

    print_header(device)
    print(
        f"data:    {samples} random 3x32x32 float32 images, batch {batch}, pad 4 + crop + flip; "
        f"median of {args.epochs} epochs after 1 warm-up epoch"
    )
    print()
    header = f"{'loader':<46} {'epoch s':>8} {'images/s':>11} {'time vs (a)':>12}"
    print(header)
    print("-" * len(header))
    reference = statistics.median(results[0][1])
    for label, (name, times) in zip("ab", results, strict=True):
        med = statistics.median(times)
        print(f"({label}) {name:<42} {med:>8.3f} {samples / med:>11,.0f} {med / reference:>11.2f}x")


if __name__ == "__main__":
    main()
