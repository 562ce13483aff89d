"""A device's measured matrix-multiply peak, and the FLOPs a training step does per image.

Together they give the fraction of the device a training run achieves: FLOPs per image times
images per second, over what the device does on one big square matmul (measured here, not a
data-sheet figure, so clocks, power limits and the library version are all in it).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _device import sync
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def peak_label(device: torch.device, dtype: torch.dtype) -> str:
    """The arithmetic a float32 run really uses on CUDA: cuDNN convolutions run in TF32
    unless told not to, so their peak is the TF32 one (several times plain float32)."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return str(dtype).removeprefix("torch.")


def measured_matmul_tflops(
    device: torch.device, dtype: torch.dtype, *, size: int | None = None, seconds: float = 1.0
) -> float:
    """Best TFLOP/s of an n x n x n matmul in `dtype` on `device` (n: 8192 CUDA, 1024 CPU),
    in TF32 where `peak_label` says the training runs in it."""
    if peak_label(device, dtype) == "tf32":
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return _matmul_tflops(device, dtype, size, seconds)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return _matmul_tflops(device, dtype, size, seconds)


def _matmul_tflops(
    device: torch.device, dtype: torch.dtype, size: int | None, seconds: float
) -> float:
    n = size or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    torch.mm(a, b, out=out)  # library warm-up (kernel choice, allocation)
    sync(device)
    best = float("inf")
    reps = 1
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        sync(device)
        started = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync(device)
        best = min(best, (time.perf_counter() - started) / reps)
        reps = min(reps * 2, 64)  # longer timed runs once the first says it is fast
    return 2 * n**3 / best / 1e12


def training_flops_per_image(model: nn.Module, input_shape: tuple[int, ...], classes: int) -> float:
    """FLOPs of one training step (forward, loss, backward) per image, counted by torch.

    Counted on a copy of the model on the CPU at batch 8 in float32; matmul and convolution
    FLOPs do not depend on the device or dtype, and the step is linear in the batch size.
    """
    import copy

    batch = 8
    probe = copy.deepcopy(model).to("cpu", torch.float32).train()
    x = torch.randn(batch, *input_shape)
    y = torch.randint(0, classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(probe(x), y).backward()
    return counter.get_total_flops() / batch
