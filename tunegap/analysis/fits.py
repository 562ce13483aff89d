"""Fits over a trial's per-epoch curves: ultra-slow diffusion and steps to a target accuracy.

- **Ultra-slow diffusion** (Hoffer, Hubara & Soudry 2017, arXiv 1705.08741, section 3 and
  Figure 2): ``||w_t - w_0|| ≈ slope · ln(t) + intercept``, `fit_diffusion` over any points
  and `fit_diffusion_phase` over the high-learning-rate phase, where the law holds.
- **Steps to target** (Shallue et al. 2018, "Measuring the effects of data parallelism on
  neural network training", arXiv 1811.03600): the number of updates at which the test
  accuracy first reaches a target, `steps_to_target`.

NumPy only: the tables call these for every trial, and neither they nor the figures should
have to import torch to do so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["fit_diffusion", "fit_diffusion_phase", "steps_to_target"]


def _floats(values: Iterable[float] | np.ndarray) -> np.ndarray:
    """Any sequence, array, pandas Series or iterator of numbers as a flat float array."""
    if isinstance(values, Sequence | np.ndarray) or hasattr(values, "__array__"):
        return np.asarray(values, dtype=float).ravel()
    return np.asarray(list(values), dtype=float).ravel()


def fit_diffusion(
    updates: Iterable[float] | np.ndarray, distance: Iterable[float] | np.ndarray
) -> tuple[float, float, float]:
    """Least-squares fit distance = slope * ln(updates) + intercept; returns (slope,
    intercept, r2).

    Points with updates <= 0 or a non-finite value are ignored. With fewer than two distinct
    update counts left the fit is undefined and all three are NaN; r2 is NaN when the
    distances are all equal.
    """
    t, d = _floats(updates), _floats(distance)
    if t.shape != d.shape:
        raise ValueError(f"updates and distance differ in length: {t.shape} vs {d.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(t) & np.isfinite(d) & (t > 0)
    t, d = t[ok], d[ok]
    if np.unique(t).size < 2:
        return math.nan, math.nan, math.nan
    x = np.log(t)
    slope, intercept = np.polyfit(x, d, 1)
    residual = d - (slope * x + intercept)
    total = float(((d - d.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    return float(slope), float(intercept), r2


def fit_diffusion_phase(
    updates: Iterable[float] | np.ndarray,
    distance: Iterable[float] | np.ndarray,
    lr: Iterable[float] | np.ndarray,
) -> dict[str, float]:
    """Fit ``weight_distance = slope · ln(updates) + intercept`` over the high-learning-rate
    phase only: the paper's "ultra-slow diffusion" (Hoffer et al. 2017, section 3, Figure 2),
    which holds while the learning rate is at its initial value.

    Rows are one per epoch (the engine's metrics: `updates`, `weight_distance`, `lr`, where
    `lr` is the rate of the epoch's last update). The phase is the rows whose lr equals the
    maximum lr (relative tolerance 1e-6) and whose updates come before the first decay, i.e.
    before the smallest update count of a row with a lower lr that follows the first max-lr
    row. Warm-up rows (lower lr before the maximum is reached) are therefore left out, and
    so is any later return to the maximum. Rows with updates <= 0 or a non-finite value are
    ignored; rows need not be sorted. The least squares is `fit_diffusion`.

    Returns ``{"slope", "intercept", "r2", "n_points"}``; the first three are NaN when fewer
    than 3 points are in the phase.
    """
    t, d, r = _floats(updates), _floats(distance), _floats(lr)
    if not t.shape == d.shape == r.shape:
        raise ValueError(
            f"updates, distance and lr differ in length: {t.shape}, {d.shape}, {r.shape}"
        )
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(t) & np.isfinite(d) & np.isfinite(r) & (t > 0)
    nan_result = {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n_points": 0}
    if not ok.any():
        return nan_result
    t, d, r = t[ok], d[ok], r[ok]
    top = r.max()
    at_top = np.isclose(r, top, rtol=1e-6, atol=0.0)
    first_top = t[at_top].min()
    decayed = ~at_top & (t > first_top)
    end = t[decayed].min() if decayed.any() else math.inf
    phase = at_top & (t < end)
    n_points = int(phase.sum())
    if n_points < 3:
        return {**nan_result, "n_points": n_points}
    slope, intercept, r2 = fit_diffusion(t[phase], d[phase])
    return {"slope": slope, "intercept": intercept, "r2": r2, "n_points": n_points}


def steps_to_target(
    updates: Iterable[float] | np.ndarray,
    test_acc: Iterable[float] | np.ndarray,
    target: float,
    *,
    interpolate: bool = True,
) -> float:
    """The number of updates at which `test_acc` first reaches `target` (same units: the
    engine logs percent), NaN when it never does.

    Shallue et al. 2018 measure "steps to reach a target validation error" against batch
    size. Rows are evaluation points (one per epoch), sorted by updates here; non-finite
    accuracies never count as reached. With ``interpolate=True`` (default) the crossing is
    linearly interpolated between the last evaluation below the target and the first at or
    above it, which removes most of the one-epoch quantization (large batches make few
    updates per epoch); with False, or when the very first evaluation already reaches the
    target, it is the update count of that first evaluation.
    """
    t, a = _floats(updates), _floats(test_acc)
    if t.shape != a.shape:
        raise ValueError(f"updates and test_acc differ in length: {t.shape} vs {a.shape}")
    order = np.argsort(t, kind="stable")
    t, a = t[order], a[order]
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(t) & np.isfinite(a)
    t, a = t[usable], a[usable]
    hit = np.flatnonzero(a >= target)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if not interpolate or i == 0:
        return float(t[i])
    t0, a0, t1, a1 = t[i - 1], a[i - 1], t[i], a[i]
    return float(t0 + (target - a0) / (a1 - a0) * (t1 - t0))
