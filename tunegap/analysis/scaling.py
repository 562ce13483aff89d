"""Steps to a target against batch size: the perfect-scaling and diminishing-returns regions.

Shallue et al. 2018 ("Measuring the effects of data parallelism on neural network
training", arXiv 1811.03600) find, for every workload and optimizer they try, the same
shape on log-log axes: up to some batch size doubling the batch halves the steps to reach a
target (perfect scaling, slope -1), beyond it the steps fall more slowly (diminishing
returns), and eventually not at all (maximal data parallelism). Zhang et al. 2019 (arXiv
1907.04164) show that the knee moves with the optimizer (momentum, Adam and preconditioning
push it to larger batches).

The model, fitted by `fit_scaling_regions` in log-log space (x = ln B, y = ln steps), is
two straight segments joined at the knee x_k = ln B_knee:

    y = a - x                              for x <= x_k   (perfect scaling: steps * B constant)
    y = a - x_k + s * (x - x_k)            for x >  x_k   (diminishing returns, -1 <= s <= 0)

It is continuous at the knee, the first slope is fixed at -1 (Shallue et al.'s definition of
perfect scaling) and the second is fitted in [-1, 0] (more steps for a larger batch is not
a scaling region; s = 0 is maximal data parallelism). For a fixed knee the model is linear
in (a, s), so it is solved exactly by least squares; the knee is found by a dense search
over the measured range refined by bounded scalar minimisation. Three parameters need at
least three distinct batch sizes.

A knee at the largest measured batch size (every point on the slope -1 line, or the fitted
s equal to -1, where the knee cannot be placed) means "perfect scaling throughout": the
critical batch size is at least the largest one measured. A knee at the smallest means
every point is already beyond it. `ScalingFit.knee` says which. With a single batch size
beyond the knee, knee and slope trade off (any knee between it and the batch size before
fits); the smallest such knee is returned and `reason` says it is only bracketed.

NumPy (and SciPy's scalar minimiser) only, like `tunegap.analysis.fits`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FITTED", "UNDETERMINED", "ScalingFit", "fit_scaling_regions", "fits_table"]

FITTED, UNDETERMINED = "fitted", "undetermined"
# Knee positions: inside the measured range, or at one of its ends (then only a bound).
INSIDE, AT_LEAST, AT_MOST = "inside", "at least", "at most"
_GRID_POINTS = 257
# A fitted slope this close to -1 is perfect scaling: the knee then has no position.
_SLOPE_TOL = 1e-6
# How close, in ln(batch), a knee must come to an end of the range to be "at" it.
_END_TOL = 1e-3


@dataclass(frozen=True)
class ScalingFit:
    """A fit of `fit_scaling_regions`; "undetermined" ones carry NaNs and a `reason`.

    - `knee_batch_size`: B_knee, where perfect scaling ends (Shallue et al.'s end of the
      perfect-scaling region, a critical batch size); `knee` says whether it lies inside
      the measured range, or is only a bound ("at least" the largest or "at most" the
      smallest batch size measured).
    - `slope_beyond`: d ln(steps) / d ln(B) beyond the knee, in [-1, 0] (NaN where no
      point lies beyond it).
    - `examples_to_target`: exp(a) = steps * B on the perfect-scaling line, the number of
      training examples the target costs there; `steps_at_knee` = exp(a) / B_knee.
    - `batch_sizes`, `steps`: the points used (finite, positive); `residuals`: ln(steps) -
      fitted ln(steps) per point; `rms_residual` their root mean square (natural-log units:
      0.1 is about 10%).
    """

    status: str
    reason: str
    n_points: int
    knee_batch_size: float = math.nan
    knee: str = ""
    slope_beyond: float = math.nan
    examples_to_target: float = math.nan
    steps_at_knee: float = math.nan
    rms_residual: float = math.nan
    batch_sizes: tuple[float, ...] = ()
    steps: tuple[float, ...] = ()
    residuals: tuple[float, ...] = ()

    @property
    def fitted(self) -> bool:
        return self.status == FITTED

    def predict(self, batch_sizes: Iterable[float] | np.ndarray) -> np.ndarray:
        """The fitted steps at `batch_sizes` (NaN everywhere when undetermined)."""
        b = np.asarray(list(batch_sizes) if not hasattr(batch_sizes, "__array__")
                       else batch_sizes, dtype=float)
        if not self.fitted:
            return np.full(b.shape, math.nan)
        slope = 0.0 if math.isnan(self.slope_beyond) else self.slope_beyond
        return np.exp(_model(np.log(b), math.log(self.examples_to_target),
                             math.log(self.knee_batch_size), slope))

    def summary(self) -> str:
        """One sentence: the knee, the slope beyond it and the residuals, or why not."""
        if not self.fitted:
            return f"undetermined ({self.reason})"
        knee = f"{self.knee_batch_size:.0f}"
        if self.knee == AT_LEAST:
            return (f"perfect scaling throughout: critical batch size at least {knee} "
                    f"(rms residual {self.rms_residual:.3f} in ln steps, {self.n_points} "
                    "points)")
        where = "at most " if self.knee == AT_MOST else "about "
        return (f"perfect scaling up to {where}{knee}, then slope {self.slope_beyond:.2f} "
                f"(rms residual {self.rms_residual:.3f} in ln steps, {self.n_points} points)")

    def as_row(self) -> dict[str, object]:
        """The scalar fields, for a table row (the per-point tuples left out)."""
        row = asdict(self)
        for name in ("batch_sizes", "steps", "residuals"):
            row.pop(name)
        return row


def _model(x: np.ndarray, a: float, xk: float, s: float) -> np.ndarray:
    return a - np.minimum(x, xk) + s * np.maximum(x - xk, 0.0)


def _solve(x: np.ndarray, y: np.ndarray, xk: float) -> tuple[float, float, float]:
    """Least squares of (a, s) for a knee at `xk`, s clipped to [-1, 0]; (sse, a, s)."""
    z = y + np.minimum(x, xk)  # z = a + s * h
    h = np.maximum(x - xk, 0.0)
    if np.ptp(h) > 0:
        s = float(np.clip(np.cov(h, z, bias=True)[0, 1] / np.var(h), -1.0, 0.0))
    else:
        s = 0.0  # no point beyond the knee: s is free, and 0 changes nothing
    a = float(np.mean(z - s * h))
    sse = float(np.sum((z - a - s * h) ** 2))
    return sse, a, s


def _points(batch_sizes, steps) -> tuple[np.ndarray, np.ndarray, int]:
    b = np.asarray(list(batch_sizes), dtype=float).ravel()
    t = np.asarray(list(steps), dtype=float).ravel()
    if b.shape != t.shape:
        raise ValueError(f"batch_sizes and steps differ in length: {b.size} vs {t.size}")
    with np.errstate(invalid="ignore"):
        bad_batch = ~np.isfinite(b) | (b <= 0)
    if bad_batch.any():
        raise ValueError(f"batch size {float(b[bad_batch][0]):g} is not allowed: use numbers > 0")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(t) & (t > 0)
    return b[ok], t[ok], int((~ok).sum())


def fit_scaling_regions(
    batch_sizes: Iterable[float] | np.ndarray, steps: Iterable[float] | np.ndarray
) -> ScalingFit:
    """Fit perfect scaling (slope -1) up to a knee and a slope in [-1, 0] beyond it, in
    log-log space (the model and method are in the module docstring).

    `steps` is steps to the target per batch size (several points per batch size, e.g.
    one per seed, are fine); NaN, infinite or non-positive steps (the target was never
    reached) are left out. With fewer than 3 points, or fewer than 3 distinct batch sizes,
    left the fit is "undetermined" with the reason. A non-positive batch size is a
    ValueError.
    """
    b, t, dropped = _points(batch_sizes, steps)
    left_out = f"; {dropped} left out (target not reached)" if dropped else ""
    n = int(b.size)
    if n < 3 or np.unique(b).size < 3:
        return ScalingFit(status=UNDETERMINED, n_points=n,
                          reason=f"{n} point(s) at {np.unique(b).size} batch size(s) reached "
                                 f"the target{left_out}: the fit needs 3 batch sizes")
    x, y = np.log(b), np.log(t)
    xk, (_, a, s) = _best_knee(x, y)
    if s <= -1.0 + _SLOPE_TOL or xk >= x.max() - _END_TOL:
        # Slope -1 beyond the knee is the same line: perfect scaling over the whole range.
        xk, s = float(x.max()), math.nan
        a = float(np.mean(y + x))
        knee = AT_LEAST
    else:
        knee = AT_MOST if xk <= x.min() + _END_TOL else INSIDE
        if not (x > xk).any():
            s = math.nan
    residuals = y - _model(x, a, xk, 0.0 if math.isnan(s) else s)
    return ScalingFit(
        status=FITTED,
        reason=f"{n} points{left_out}{_bracket_note(b, xk, knee)}",
        n_points=n,
        knee_batch_size=float(math.exp(xk)),
        knee=knee,
        slope_beyond=s,
        examples_to_target=float(math.exp(a)),
        steps_at_knee=float(math.exp(a - xk)),
        rms_residual=float(np.sqrt(np.mean(residuals**2))),
        batch_sizes=tuple(float(v) for v in b),
        steps=tuple(float(v) for v in t),
        residuals=tuple(float(v) for v in residuals),
    )


def _bracket_note(b: np.ndarray, xk: float, knee: str) -> str:
    """Why a knee with one batch size beyond it is only bracketed: any knee between the last
    perfect-scaling batch size and that one fits as well, with another slope."""
    beyond = np.unique(b[np.log(b) > xk + _END_TOL])
    if knee != INSIDE or beyond.size != 1:
        return ""
    below = b[np.log(b) <= xk + _END_TOL].max()
    return (f"; only B={beyond[0]:g} lies beyond the knee: any knee from {below:g} to "
            f"{beyond[0]:g} fits it, so the knee is bracketed, not placed")


def _best_knee(x: np.ndarray, y: np.ndarray) -> tuple[float, tuple[float, float, float]]:
    """The knee (in ln B) of least squared error over [min x, max x], and its (sse, a, s)."""
    from scipy.optimize import minimize_scalar

    grid = np.unique(np.concatenate([np.linspace(x.min(), x.max(), _GRID_POINTS), x]))
    sse = np.array([_solve(x, y, g)[0] for g in grid])
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    best = float(grid[i])
    if hi > lo:
        refined = minimize_scalar(lambda g: _solve(x, y, g)[0], bounds=(lo, hi),
                                  method="bounded", options={"xatol": 1e-9})
        if refined.fun < sse[i]:
            best = float(refined.x)
    return best, _solve(x, y, best)


def fits_table(fits: dict[str, ScalingFit], key: str = "optimizer") -> list[dict[str, object]]:
    """Rows of one table, one per fit: `key` (the name of the fit) then `ScalingFit.as_row`."""
    return [{key: name, **fit.as_row(), "summary": fit.summary()} for name, fit in fits.items()]
