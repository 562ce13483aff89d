"""How many seeds a side would decide a cell: the power of the Welch test that
`tunegap.analysis.decide` judges by, planned from the spreads the seeds so far show."""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_SEEDS_TO_DECIDE", "POWER", "seeds_for_power"]

POWER = 0.80  # what `seeds_to_decide` plans for
MAX_SEEDS_TO_DECIDE = 1000


def seeds_for_power(gap: float, var_b: float, var_c: float, *, margin: float,
                    confidence: float, more_than: int) -> int | None:
    """The smallest n in (more_than, MAX_SEEDS_TO_DECIDE] at which a Welch test at this
    confidence, with n seeds a side, decides with probability POWER if `gap` and the
    sample variances `var_b`, `var_c` were the truth; None if none does. A paired design is
    var_b = the variance of the per-seed differences and var_c = 0 (then df = n - 1)."""
    if more_than >= MAX_SEEDS_TO_DECIDE or var_b + var_c == 0 or gap == margin:
        return None
    from scipy import stats

    n = np.arange(more_than + 1, MAX_SEEDS_TO_DECIDE + 1, dtype=float)
    se = np.sqrt((var_b + var_c) / n)
    # Welch–Satterthwaite with n seeds on both sides: (vb + vc)^2 (n - 1) / (vb^2 + vc^2).
    df = (var_b + var_c) ** 2 * (n - 1) / (var_b**2 + var_c**2)
    t_test = stats.t.ppf(0.5 + confidence / 2, df)
    # Power of the one-sided test on the side the gap lies: P(T > t_test - |gap - M| / se),
    # with T ~ t(df) (a central-t approximation of the noncentral t, fine for planning).
    power = stats.t.sf(t_test - abs(gap - margin) / se, df)
    hits = np.flatnonzero(power >= POWER)
    return int(n[hits[0]]) if hits.size else None
