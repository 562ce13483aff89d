"""Instruments beyond the paper that read the model: gradient noise scale and sharpness.

Each probe is a plain function (or one small accumulator class) that reads a model and a
batch and leaves everything it touched as it found it, so the engine can call it inside its
loop without changing the training trajectory:

- parameters and their ``.grad`` fields are never written (gradients come from
  ``torch.autograd.grad``, which does not accumulate into ``.grad``);
- buffers (BatchNorm running statistics, ``num_batches_tracked``) are restored after a
  forward pass in training mode;
- the train/eval flag of every module is restored;
- the global RNG (CPU and the model's CUDA device) is forked, so dropout in a probe's forward
  pass does not shift the random numbers the training loop draws next.

Instruments:

- **Gradient noise scale** (McCandlish, Kaplan, Amodei et al. 2018, "An empirical model of
  large-batch training", arXiv 1812.06162, section 2.2 and appendix A): the simple noise scale
  ``B_simple = tr(Σ) / |G|²`` from squared gradient norms at two batch sizes,
  `NoiseScaleEstimator`, `noise_scale_from_step`.
- **Sharpness** (Keskar et al. 2017, "On large-batch training for deep learning:
  generalization gap and sharp minima", arXiv 1609.04836): the top eigenvalue of the
  Hessian of the training loss by power iteration with Hessian-vector products,
  `top_hessian_eigenvalue`.

The fits over the curves these and the engine log (diffusion, steps to target) need no
torch and live in `tunegap.analysis.fits`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "GradientNorms",
    "LossFn",
    "NoiseScaleEstimator",
    "grad_norm_sq",
    "noise_scale_from_step",
    "small_batch_size",
    "top_hessian_eigenvalue",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(model(x), y)`` -> the scalar *mean* loss over the batch (``F.cross_entropy``).

The noise-scale estimators need the mean (not the sum): ``|G_B|²`` is the squared norm of
the batch-averaged gradient."""


# ------------------------------------------------------------------ leave-no-trace helpers


def _params(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _untouched(model: nn.Module, mode: Literal["train", "eval"] | None) -> Iterator[None]:
    """Run a block with `model` in `mode` (None = as it is) and undo every side effect:
    module train/eval flags, buffers (BatchNorm running statistics) and the global RNG."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    device = _model_device(model)
    cuda: list[int] = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=cuda):
            if mode is not None:
                model.train(mode == "train")
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in flags:
            m.training = training


def _sq_norm(tensors: Iterable[Tensor | None]) -> Tensor:
    """Sum of squares of all tensors, as a 0-d tensor (no host sync)."""
    parts = [t.detach().pow(2).sum() for t in tensors if t is not None]
    if not parts:
        return torch.zeros(())
    return torch.stack([p.to(parts[0].dtype) for p in parts]).sum()


def _grad_sq_norm(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> Tensor:
    params = _params(model)
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return _sq_norm(grads)


# ---------------------------------------------------------------------- gradient noise scale


class GradientNorms(NamedTuple):
    """One noise-scale measurement: ``|G_B|²`` at two batch sizes.

    The squared norms are detached 0-d tensors on the model's device (``float(t)`` reads
    one); `NoiseScaleEstimator.add` takes them as they are, so no host sync is needed.
    """

    g_small_sq: Tensor
    g_big_sq: Tensor
    b_small: int
    b_big: int


def small_batch_size(
    batch_size: int,
    *,
    small_fraction: float = 0.125,
    min_small: int = 2,
    multiple_of: int | None = None,
) -> int | None:
    """The sub-batch size the noise-scale probes use for a batch of `batch_size`, or None
    when no valid one exists (then skip the measurement, e.g. on a tiny last batch).

    ``round(small_fraction * batch_size)``, at least `min_small` (BatchNorm in training mode
    needs 2 samples), rounded up to a multiple of `multiple_of` (pass the ghost batch size
    under Ghost BatchNorm, see `noise_scale_from_step`), and strictly below `batch_size`.
    """
    if not 0.0 < small_fraction < 1.0:
        raise ValueError(f"small_fraction must be in (0, 1), got {small_fraction!r}")
    if min_small < 1:
        raise ValueError(f"min_small must be >= 1, got {min_small!r}")
    if multiple_of is not None and multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive int or None, got {multiple_of!r}")
    b = max(min_small, round(small_fraction * batch_size))
    if multiple_of is not None:
        b = -(-b // multiple_of) * multiple_of
    return b if b < batch_size else None


def _checked_small(batch: int, small_fraction: float, multiple_of: int | None) -> int:
    b = small_batch_size(batch, small_fraction=small_fraction, multiple_of=multiple_of)
    if b is None:
        raise ValueError(
            f"a batch of {batch} samples is too small for a noise-scale measurement "
            f"(small_fraction={small_fraction}, multiple_of={multiple_of}): check "
            "small_batch_size(...) is not None before measuring"
        )
    return b


def grad_norm_sq(model: nn.Module) -> Tensor:
    """``|g|²`` of the gradients now in the parameters' ``.grad`` fields (0-d tensor, no sync).

    Use it after ``loss.backward()`` when the engine does not clip; when it clips,
    ``clip_grad_norm_`` already returns the pre-clip norm: square that instead.
    """
    return _sq_norm(p.grad for p in model.parameters())


def noise_scale_from_step(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    g_big_sq: Tensor | float,
    small_fraction: float = 0.125,
    multiple_of: int | None = None,
) -> GradientNorms:
    """Squared norms of the mean-loss gradient over the whole batch and over a sub-batch,
    reusing the full-batch gradient the training step has already computed: only the
    sub-batch forward+backward runs (about `small_fraction` of a step; on a GPU a small batch
    is latency-bound, so somewhat more).

    McCandlish et al. 2018, appendix A: ``E|G_B|² = |G|² + tr(Σ)/B`` for the mean gradient
    of B i.i.d. samples, so norms at two batch sizes give unbiased estimates of ``|G|²`` and
    ``tr(Σ)`` (see `NoiseScaleEstimator`). ``B_big = len(x)``; ``B_small`` is
    `small_batch_size` of it, and the sub-batch is the first ``B_small`` rows of `x` (a
    random subset when the loader shuffles).

    `g_big_sq` is the squared norm of the **pre-clip, pre-weight-decay** gradient of the mean
    loss over all of `x`, at the **current** weights: call this after ``loss.backward()`` and
    before ``optimizer.step()``, with ``clip_grad_norm_(...) ** 2`` (it returns the norm
    before clipping) or `grad_norm_sq(model)` when not clipping. SGD adds weight decay inside
    ``step()``, so ``.grad`` never holds it, and neither measurement includes it.

    The sub-batch pass runs in the model's current mode (training, as the step's was), so
    BatchNorm normalizes it with its own batch statistics: the sub-batch's per-sample losses
    are not exactly those of the same samples inside the big batch, and the estimator's
    i.i.d. model holds only approximately (the sub-batch gradient also carries BatchNorm's
    own small-batch noise). Under Ghost BatchNorm pass ``multiple_of=ghost_batch_size``: the
    sub-batch is then a whole number of ghost batches aligned with the big batch's, and
    computes exactly the same per-sample losses.

    Nothing is changed: parameters, ``.grad``, the optimizer, buffers, module modes and the
    global RNG are as before (see the module docstring).
    """
    b_big = int(x.shape[0])
    b_small = _checked_small(b_big, small_fraction, multiple_of)
    with _untouched(model, None):
        g_small_sq = _grad_sq_norm(model, loss_fn, x[:b_small], y[:b_small])
    if not isinstance(g_big_sq, Tensor):
        g_big_sq = torch.tensor(float(g_big_sq), device=g_small_sq.device)
    return GradientNorms(g_small_sq, g_big_sq.detach(), b_small, b_big)


class NoiseScaleEstimator:
    """Accumulates measurements of the simple noise scale ``B_simple = tr(Σ) / |G|²``.

    McCandlish et al. 2018, appendix A.1. Each measurement (squared norms of mean gradients
    at ``b_small < b_big`` samples, same weights) gives the unbiased estimates

        |G|²   ≈ (b_big·|G_big|² − b_small·|G_small|²) / (b_big − b_small)
        tr(Σ)  ≈ (|G_small|² − |G_big|²) / (1/b_small − 1/b_big)

    Single estimates are very noisy (tr(Σ)'s can be negative) and the ratio of noisy
    estimates is biased, so numerator and denominator are averaged separately and divided
    only in `value`: a plain mean over everything added since `reset` (``ema_decay=None``,
    e.g. one epoch), or an exponential moving average with bias correction (as the paper
    does), ``m ← d·m + (1−d)·x``.

    `add` accepts floats or 0-d tensors; with tensors the running sums stay on the device
    and the host syncs only in `value`/`trace_sigma`/`g_sq`/`state_dict`.
    """

    def __init__(self, *, ema_decay: float | None = None) -> None:
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}")
        self.ema_decay = ema_decay
        self.reset()

    def reset(self) -> None:
        """Forget every measurement."""
        self.count = 0
        self._g_sq: Tensor | float = 0.0
        self._trace: Tensor | float = 0.0
        self._weight = 0.0

    def add(
        self,
        g_small_sq: Tensor | float,
        g_big_sq: Tensor | float,
        b_small: int,
        b_big: int,
    ) -> None:
        """Add one measurement (e.g. ``estimator.add(*noise_scale_from_step(...))``)."""
        if not 1 <= b_small < b_big:
            raise ValueError(f"need 1 <= b_small < b_big, got b_small={b_small}, b_big={b_big}")
        gs, gb = _as_float64(g_small_sq), _as_float64(g_big_sq)
        g_sq = (b_big * gb - b_small * gs) / (b_big - b_small)
        trace = (gs - gb) / (1.0 / b_small - 1.0 / b_big)
        if self.ema_decay is None:
            self._g_sq = self._g_sq + g_sq
            self._trace = self._trace + trace
            self._weight += 1.0
        else:
            d = self.ema_decay
            self._g_sq = d * self._g_sq + (1.0 - d) * g_sq
            self._trace = d * self._trace + (1.0 - d) * trace
            self._weight = d * self._weight + (1.0 - d)
        self.count += 1

    def g_sq(self) -> float:
        """The averaged estimate of ``|G|²`` (the true gradient's squared norm); NaN if empty."""
        return float(self._g_sq) / self._weight if self.count else math.nan

    def trace_sigma(self) -> float:
        """The averaged estimate of ``tr(Σ)`` (per-sample gradient covariance); NaN if empty."""
        return float(self._trace) / self._weight if self.count else math.nan

    def value(self) -> float:
        """``B_simple = tr(Σ) / |G|²`` from the averaged estimates.

        NaN when nothing was added or the ``|G|²`` estimate is not positive (noise
        dominates: add more measurements). Can be negative when too few measurements make
        the ``tr(Σ)`` estimate negative.
        """
        g_sq = self.g_sq()
        if not g_sq > 0.0:
            return math.nan
        return self.trace_sigma() / g_sq

    def state_dict(self) -> dict[str, Any]:
        """Plain floats, for checkpoints (`load_state_dict` continues exactly)."""
        return {
            "ema_decay": self.ema_decay,
            "count": self.count,
            "g_sq": float(self._g_sq),
            "trace": float(self._trace),
            "weight": self._weight,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["ema_decay"] != self.ema_decay:
            raise ValueError(
                f"checkpoint has ema_decay={state['ema_decay']!r}, this estimator "
                f"{self.ema_decay!r}"
            )
        self.count = int(state["count"])
        self._g_sq = float(state["g_sq"])
        self._trace = float(state["trace"])
        self._weight = float(state["weight"])


def _as_float64(value: Tensor | float) -> Tensor | float:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64)
    return float(value)


# -------------------------------------------------------------------------------- sharpness


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    chunk_size: int | None = None,
) -> float:
    """The top eigenvalue of the Hessian of the mean loss on ``(x, y)`` w.r.t. all trainable
    parameters, by power iteration with Hessian-vector products (double backprop).

    Keskar et al. 2017 relate large-batch generalization to sharp minima; the top Hessian
    eigenvalue is the usual measure of sharpness. ``Hv`` is
    ``∂(∇L·v)/∂w`` via ``torch.autograd.grad(..., create_graph=True)``; the estimate is the
    Rayleigh quotient ``vᵀHv`` of the normalized iterate, stopping after `iters` products or
    when it changes by less than ``tol`` relative to its value. Power iteration converges to
    the eigenvalue of largest *magnitude*: near a minimum that is the top (positive) one; a
    negative return means a direction of strong negative curvature dominates. The start
    vector is drawn from a generator seeded with `seed` (the global RNG is not used).

    The model runs in **eval mode**: BatchNorm normalizes with its running statistics, so the
    loss is a deterministic function of the weights alone, the same at every product (in
    training mode each forward would use batch statistics, couple the samples, move the
    running statistics and, with dropout, draw new masks, so power iteration would chase a
    moving matrix; Ghost BatchNorm's training-mode kernel is also not twice differentiable).
    Pass a **fixed** data subset (e.g. the first 512 training samples) so values at
    different epochs are comparable. Modes, parameters, ``.grad`` and buffers are left as
    they were.

    Cost: each iteration is one Hessian-vector product, about 2-4x a forward+backward on
    `x`. With `chunk_size` the subset is processed in chunks (less memory, the graph is
    rebuilt per chunk and iteration); without it the first-order graph is built once.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters!r}")
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("no samples to compute the Hessian on")
    params = _params(model)
    if not params:
        raise ValueError("the model has no trainable parameters")
    chunk = n if chunk_size is None else max(1, int(chunk_size))
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]

    with _untouched(model, "eval"):
        cached: list[Tensor | None] | None = None
        if len(bounds) == 1:
            loss = loss_fn(model(x), y)
            cached = list(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True))

        def hvp(v: list[Tensor]) -> list[Tensor]:
            out = [torch.zeros_like(p) for p in params]
            for start, stop in bounds:
                if cached is not None:
                    grads = cached
                else:
                    loss_c = loss_fn(model(x[start:stop]), y[start:stop])
                    grads = list(
                        torch.autograd.grad(loss_c, params, create_graph=True, allow_unused=True)
                    )
                pairs = [(g, vi) for g, vi in zip(grads, v, strict=True) if g is not None]
                if not pairs or not any(g.requires_grad for g, _ in pairs):
                    continue  # the loss is linear in every parameter: Hv = 0
                dot = sum((g * vi).sum() for g, vi in pairs)
                hv = torch.autograd.grad(
                    dot, params, retain_graph=cached is not None, allow_unused=True
                )
                weight = (stop - start) / n
                for o, h in zip(out, hv, strict=True):
                    if h is not None:
                        o.add_(h.detach(), alpha=weight)
            return out

        generator = torch.Generator().manual_seed(seed)
        v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
        v = _normalized(v)
        eigenvalue = math.nan
        for _ in range(iters):
            hv = hvp(v)
            new = float(sum((h * vi).sum() for h, vi in zip(hv, v, strict=True)))
            norm = float(_sq_norm(hv).sqrt())
            converged = math.isfinite(eigenvalue) and abs(new - eigenvalue) <= tol * abs(new)
            eigenvalue = new
            if converged or norm == 0.0 or not math.isfinite(norm):
                break
            v = [h / norm for h in hv]
    return eigenvalue


def _normalized(v: list[Tensor]) -> list[Tensor]:
    norm = _sq_norm(v).sqrt()
    return [t / norm for t in v]
