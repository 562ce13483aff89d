"""Ghost Batch Normalization, vectorized.

Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the generalization gap in
large batch training of neural networks", NeurIPS 2017 (arXiv 1705.08741), section 4.
A large batch is split into consecutive "ghost" batches of `ghost_batch_size` samples and
every ghost batch is normalized with its own mean and variance, so that the noise BatchNorm
injects stays that of small-batch training while the weight update uses the whole batch.

The authors' code (github.com/eladhoffer/bigBatch main_gbn.py) runs forward and backward once
per ghost batch (``input.chunk(B // mini_batch_size)`` + a plain BatchNorm per chunk). This
module computes the same function in one pass over the batch:

* normalization: the batch is viewed as ``[ghosts, ghost_size, C, spatial]`` (a view, no
  copy) and the per-(ghost, channel) statistics come from a few fused reductions and
  elementwise ops that write into the output buffer; the backward is derived by hand
  (the BatchNorm backward per ghost batch). At most two calls per op: one for the full
  ghost batches and one for a smaller last ghost batch when the batch is not divisible.
* running statistics: the chunked method applies BatchNorm's update once per ghost batch,
  in order; its closed form (weights ``m * (1 - m) ** (G - k)``, or ``1 / num_batches`` for
  ``momentum=None``) is applied in one step, with the unbiased per-ghost variance.

How a batch that is not a multiple of the ghost size is split (`split`):

* ``"fixed"`` (the default): ghost batches of exactly ``ghost_batch_size`` samples and one
  smaller last ghost batch with the remainder (100 samples, ghost 32: 32, 32, 32, 4).
* ``"chunk"``: the authors' ``x.chunk(B // ghost_batch_size)``, torch.chunk's semantics:
  ghost batches of ``ceil(B / (B // ghost_batch_size))`` samples, the last possibly smaller
  (100, ghost 32: 3 chunks of 34, 34, 32). Only the batch the layer sees counts: for an
  epoch's smaller last batch main_gbn.py still asks for ``batch_size // mini_batch_size``
  chunks of the configured batch size, which this layer cannot know.

Layers are drop-ins for ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` (they subclass them): same
constructor (plus ``ghost_batch_size`` and ``split``), parameters, buffers and ``state_dict``
keys, so a model trained with ghost batches loads into plain BatchNorm for inference.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GhostBatchNorm", "GhostBatchNorm1d", "GhostBatchNorm2d"]

# Dtypes the statistics are computed in directly.
_COMPUTE_DTYPES = (torch.float32, torch.float64)

# How a bf16 input (a conv output under autocast) is normalized; either way the statistics
# and parameter gradients are accumulated in fp32, as the native kernels do.
# - kept in bf16: read and written as bf16, with fp32 scratch only where sums cancel; about
#   half the memory traffic of a copy to fp32 and back, and the saved input is half the size.
#   It needs elementwise kernels that mix bf16 and fp32 operands, which the CPU runs ~10x
#   slower than same-dtype ones (benchmarks/mixed_dtype.py); CUDA is expected to run them
#   near memory speed, which is not yet measured (benchmarks/README.md).
# - copied to fp32: computed in fp32 and the output cast back to bf16.
# None picks "kept" on CUDA and "copied" elsewhere; True / False force one (the benchmark
# times both; tests check both against the chunked reference on CPU). fp16 is always copied,
# since its squared deviations could overflow.
KEEP_BF16: bool | None = None


def _keeps_bf16(x: Tensor) -> bool:
    if x.dtype != torch.bfloat16:
        return False
    return x.is_cuda if KEEP_BF16 is None else KEEP_BF16


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _COMPUTE_DTYPES else torch.float32


def check_ghost_batch_size(value: object) -> int | None:
    """A ghost batch size as an int, or None for plain BatchNorm: the one rule for modules,
    trial configs and command lines (`tunegap.config.parse_ghost_batch_size` reads "none" and
    digits first); anything else is a ValueError in one line.

    >>> check_ghost_batch_size(32), check_ghost_batch_size(None)
    (32, None)
    >>> check_ghost_batch_size(0)
    Traceback (most recent call last):
    ...
    ValueError: ghost_batch_size 0 is not allowed: use a positive integer or 'none'
    """
    if value is None:
        return None
    # bool is an int subclass, but `ghost_batch_size=True` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(
            f"ghost_batch_size {value!r} is not allowed: use a positive integer or 'none'")
    return int(value)


Split = Literal["fixed", "chunk"]
SPLITS: tuple[str, ...] = get_args(Split)


def check_split(value: object) -> str:
    if value not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {value!r}")
    return str(value)


def _ghost_size(batch: int, ghost: int, split: Split) -> int:
    """The size of the full ghost batches of a batch of `batch` (> `ghost`) samples."""
    if split == "chunk":
        # torch.chunk(k): chunks of ceil(batch / k), so there may be fewer than k of them.
        return -(-batch // (batch // ghost))
    return ghost


def _segments(batch: int, ghost: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, number of ghosts, ghost size) for the full ghosts and the remainder.

    At most two segments, so the work per layer is a fixed number of tensor ops whatever the
    number of ghost batches.
    """
    full = batch // ghost
    segs = []
    if full:
        segs.append((0, full * ghost, full, ghost))
    if batch > full * ghost:
        segs.append((full * ghost, batch, 1, batch - full * ghost))
    return segs


class _GhostBatchNormFunction(torch.autograd.Function):
    """Per-ghost-batch normalization of ``x`` ([N, C, *]) with a hand-written backward.

    Returns the output and, for the running statistics, the per-ghost mean and biased
    variance ([ghosts, C], not differentiable). Every op is either a reduction over
    (ghost sample, spatial) or an elementwise op writing into a preallocated buffer: on CPU
    the cost of a training step is dominated by allocating and touching fresh batch-sized
    tensors, so for fp32/fp64 this allocates exactly what BatchNorm does (the output, and dx
    in backward). A bf16 input kept in bf16 also takes one fp32 scratch of its size in each
    pass, for the sums that cancel and the input gradient's single rounding.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        ghost: int,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n_batch, channels = x.shape[:2]
        acc = _accumulate_dtype(x.dtype)
        # The output keeps the input's memory format (e.g. channels_last); all the work is
        # done on [N, C, S] views of the input and output.
        y = torch.empty_like(x)
        # Squared deviations are kept in the accumulation dtype: rounded to bf16 they would
        # put the variance off by ~1e-3 where the native kernel is exact to fp32.
        scratch = y if acc == x.dtype else torch.empty_like(x, dtype=acc)
        x3, y3 = x.view(n_batch, channels, -1), y.view(n_batch, channels, -1)
        s3 = scratch.view(n_batch, channels, -1)
        means, variances, invstds = [], [], []
        for start, stop, n_ghosts, size in _segments(n_batch, ghost):
            xs = x3[start:stop].view(n_ghosts, size, channels, -1)
            ys = y3[start:stop].view(n_ghosts, size, channels, -1)
            ss = s3[start:stop].view(n_ghosts, size, channels, -1)
            count = size * xs.shape[3]
            # Two-pass variance (as the native kernel): mean, then mean of squared deviations,
            # using the output buffer as scratch where it has the accumulation dtype.
            mean = xs.sum((1, 3), keepdim=True, dtype=acc).div_(count)
            torch.sub(xs, mean, out=ss)
            ss.square_()
            var = ss.sum((1, 3), keepdim=True).div_(count)
            invstd = torch.rsqrt(var + eps)
            # y = x * alpha + beta, the form the native CPU kernel uses.
            alpha = invstd if weight is None else invstd * weight.view(1, 1, channels, 1)
            beta = -mean * alpha
            if bias is not None:
                beta = beta + bias.view(1, 1, channels, 1)
            torch.addcmul(beta, xs, alpha, out=ys)
            means.append(mean.view(n_ghosts, channels))
            variances.append(var.view(n_ghosts, channels))
            invstds.append(invstd.view(n_ghosts, channels))
        mean_all = torch.cat(means)
        var_all = torch.cat(variances)
        ctx.save_for_backward(x, weight, mean_all, torch.cat(invstds))
        ctx.ghost = ghost
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean_all, var_all)
        return y, mean_all, var_all

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_out: Tensor, _grad_mean: Tensor, _grad_var: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight, mean_all, invstd_all = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n_batch, channels = x.shape[:2]
        acc = _accumulate_dtype(x.dtype)
        # Scratch in the accumulation dtype, for the terms of sum(dy * (x - mean)) and the
        # input gradient before its one rounding to bf16. The sum cancels (rounded to bf16 its
        # terms would put the weight gradient off by ~1e-2), and so may dx's two parts.
        # For fp32/fp64 the scratch is dx's own buffer.
        same = acc == x.dtype
        scratch = torch.empty_like(x, dtype=acc)
        buf = scratch if same else (torch.empty_like(x) if need_x else None)
        x3, s3 = x.view(n_batch, channels, -1), scratch.view(n_batch, channels, -1)
        b3 = None if buf is None else buf.view(n_batch, channels, -1)
        g3 = grad_out.reshape(n_batch, channels, -1)
        grad_w = x.new_zeros(channels, dtype=acc) if need_w else None
        grad_b = x.new_zeros(channels, dtype=acc) if need_b and ctx.has_bias else None
        offset = 0
        for start, stop, n_ghosts, size in _segments(n_batch, ctx.ghost):
            xs = x3[start:stop].view(n_ghosts, size, channels, -1)
            ss = s3[start:stop].view(n_ghosts, size, channels, -1)
            gs = g3[start:stop].reshape(n_ghosts, size, channels, -1)
            count = size * xs.shape[3]
            mean = mean_all[offset : offset + n_ghosts].view(n_ghosts, 1, channels, 1)
            invstd = invstd_all[offset : offset + n_ghosts].view(n_ghosts, 1, channels, 1)
            offset += n_ghosts
            sum_dy = gs.sum((1, 3), keepdim=True, dtype=acc)
            torch.sub(xs, mean, out=ss)
            ss.mul_(gs)
            dot = ss.sum((1, 3), keepdim=True)  # sum(dy * (x - mean)) per (ghost, channel)
            if grad_w is not None:
                grad_w += (dot * invstd).sum((0, 1, 3))
            if grad_b is not None:
                grad_b += sum_dy.sum((0, 1, 3))
            if need_x:
                # dx = w*invstd/n * (n*dy - sum(dy) - x_hat * sum(dy * x_hat)), per ghost:
                #    = a*dy - k*x + c,  with c = k*mean - a*sum(dy)/n  (two passes)
                a = invstd if weight is None else invstd * weight.view(1, 1, channels, 1)
                k = a * invstd * invstd * dot / count
                c = k * mean - a * sum_dy / count
                bs = b3[start:stop].view(n_ghosts, size, channels, -1)
                if same:
                    torch.addcmul(c, xs, -k, out=bs)
                    bs.addcmul_(gs, a)
                else:
                    torch.addcmul(c, gs, a, out=ss)
                    torch.addcmul(ss, xs, -k, out=bs)
        return (buf if need_x else None), grad_w, grad_b, None, None


def _ghost_batch_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, ghost: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize per ghost batch; returns (output, per-ghost means, biased variances).

    Low-precision inputs (e.g. a bf16 conv output under autocast, where BatchNorm is not
    cast) give an output of their own dtype with statistics in fp32, as the native kernels
    do (see `KEEP_BF16` for how bf16 is handled).
    """
    out_dtype = x.dtype
    dtype = x.dtype if x.dtype in _COMPUTE_DTYPES or _keeps_bf16(x) else torch.float32
    x = x.to(dtype)
    try:
        x.view(x.shape[0], x.shape[1], -1)
    except RuntimeError:  # spatial dims not mergeable as a view (unusual strides)
        x = x.contiguous()
    # Parameters join the computation in the accumulation dtype (fp32 for bf16 input).
    acc = _accumulate_dtype(dtype)
    w = weight.to(acc) if weight is not None else None
    b = bias.to(acc) if bias is not None else None
    y, mean, var = _GhostBatchNormFunction.apply(x, w, b, ghost, eps)
    return y.to(out_dtype), mean, var


class GhostBatchNorm(_BatchNorm):
    """Shared implementation of `GhostBatchNorm1d` / `GhostBatchNorm2d` (use those).

    With ``ghost_batch_size=None``, or a batch no larger than the ghost size, or whenever
    BatchNorm would use running statistics (eval mode), this is exactly the parent
    BatchNorm. Otherwise each consecutive group of ``ghost_batch_size`` samples along dim 0
    (the last group may be smaller) is normalized with its own statistics, and the running
    statistics and ``num_batches_tracked`` end up as if BatchNorm had seen the ghost batches
    one after another, which is what the authors' chunked implementation does.
    ``split="chunk"`` splits as the authors' ``torch.chunk`` does instead (see the module
    docstring); in eval mode, or for a batch no larger than the ghost size, both are the same.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        ghost_batch_size: int | None = None,
        split: Split = "fixed",
    ) -> None:
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            device=device,
            dtype=dtype,
        )
        self.ghost_batch_size = ghost_batch_size
        self.split = split

    @property
    def ghost_batch_size(self) -> int | None:
        """Samples per ghost batch; None normalizes over the whole batch (plain BatchNorm)."""
        return self._ghost_batch_size

    @ghost_batch_size.setter
    def ghost_batch_size(self, value: int | None) -> None:
        self._ghost_batch_size = check_ghost_batch_size(value)

    @property
    def split(self) -> str:
        """Either "fixed" (ghosts of exactly ghost_batch_size, a smaller remainder) or "chunk"
        (the authors' torch.chunk(B // ghost_batch_size))."""
        return self._split

    @split.setter
    def split(self, value: str) -> None:
        self._split = check_split(value)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}, "
            f"split={self.split!r}"
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        ghost = self.ghost_batch_size
        # Same rule as BatchNorm: batch statistics in training, or when there are no
        # running statistics; that is exactly when the chunked method normalizes per chunk.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if ghost is None or not use_batch_stats or input.shape[0] <= ghost:
            return super().forward(input)

        n_batch = input.shape[0]
        ghost = _ghost_size(n_batch, ghost, self.split)
        spatial = math.prod(input.shape[2:])
        # F.batch_norm refuses to normalize a single value per channel; so would the
        # chunked method on the offending chunk.
        if spatial == 1 and (ghost == 1 or n_batch % ghost == 1):
            raise ValueError(
                "Expected more than 1 value per channel when training, got a ghost batch of "
                f"size 1 (batch {tuple(input.shape)}, ghost_batch_size {ghost})"
            )

        y, mean, var = _ghost_batch_norm(input, self.weight, self.bias, ghost, self.eps)
        if self.training and self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean, var, n_batch, spatial, ghost)
        return y

    @torch.no_grad()
    def _update_running_stats(
        self, mean: Tensor, var: Tensor, n_batch: int, spatial: int, ghost: int
    ) -> None:
        """Apply BatchNorm's running-statistics update once per ghost batch, in closed form.

        Sequentially, ghost k (1..G) does ``r = (1 - f_k) * r + f_k * s_k``. Unrolled:
        ``r_G = prod_k (1 - f_k) * r_0 + sum_k f_k * prod_{j>k} (1 - f_j) * s_k``, which is
        ``(1-m)^G * r_0 + sum_k m (1-m)^(G-k) s_k`` for a fixed momentum m, and
        ``(t0 * r_0 + sum_k s_k) / (t0 + G)`` for the cumulative average (momentum None,
        f_k = 1 / (t0 + k), t0 = num_batches_tracked before the batch). `ghost` is the size
        of the full ghost batches of this batch.
        """
        n_ghosts = mean.shape[0]
        running_mean, running_var = self.running_mean, self.running_var
        assert running_mean is not None and running_var is not None
        stat_dtype = torch.promote_types(mean.dtype, running_mean.dtype)
        device = running_mean.device

        # Unbiased variance per ghost, as BatchNorm stores: var * n / (n - 1).
        counts = torch.full((n_ghosts, 1), float(ghost * spatial), dtype=stat_dtype, device=device)
        counts[-1] = float((n_batch - (n_ghosts - 1) * ghost) * spatial)
        mean = mean.to(stat_dtype)
        unbiased = var.to(stat_dtype) * counts / (counts - 1)

        nbt = self.num_batches_tracked
        if nbt is not None:
            nbt.add_(n_ghosts)
        if self.momentum is None:
            if nbt is None:  # BatchNorm's factor is then 0: the statistics never move.
                return
            total = nbt.to(stat_dtype)  # t0 + G, on device (no host sync)
            keep = (total - n_ghosts) / total
            new_mean = running_mean.to(stat_dtype) * keep + mean.sum(0) / total
            new_var = running_var.to(stat_dtype) * keep + unbiased.sum(0) / total
        else:
            m = float(self.momentum)
            powers = torch.arange(n_ghosts - 1, -1, -1, dtype=torch.float64, device=device)
            weights = (m * (1.0 - m) ** powers).to(stat_dtype).unsqueeze(1)
            keep = (1.0 - m) ** n_ghosts
            new_mean = running_mean.to(stat_dtype) * keep + (weights * mean).sum(0)
            new_var = running_var.to(stat_dtype) * keep + (weights * unbiased).sum(0)
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)


class GhostBatchNorm1d(GhostBatchNorm, nn.BatchNorm1d):
    """Ghost BatchNorm for [N, C] or [N, C, L] inputs; a drop-in for `nn.BatchNorm1d`.

    >>> import torch
    >>> gbn = GhostBatchNorm1d(8, ghost_batch_size=32)
    >>> gbn(torch.randn(128, 8, 40)).shape     # statistics over 4 ghost batches of 32
    torch.Size([128, 8, 40])
    """


class GhostBatchNorm2d(GhostBatchNorm, nn.BatchNorm2d):
    """Ghost BatchNorm for [N, C, H, W] inputs; a drop-in for `nn.BatchNorm2d`.

    >>> import torch
    >>> gbn = GhostBatchNorm2d(3, ghost_batch_size=16)
    >>> gbn(torch.randn(64, 3, 8, 8)).shape
    torch.Size([64, 3, 8, 8])
    """
