import math
import subprocess
import sys

import numpy as np
import pytest

from tunegap.analysis.fits import fit_diffusion, fit_diffusion_phase, steps_to_target


def test_fit_diffusion_recovers_a_planted_slope():
    rng = np.random.default_rng(0)
    t = np.geomspace(1, 1e5, 300)
    d = 2.5 * np.log(t) + 1.5 + rng.normal(0, 0.05, t.size)
    # Invalid points that must be ignored.
    t = np.concatenate([t, [0.0, -3.0, np.nan, 10.0]])
    d = np.concatenate([d, [100.0, 100.0, 1.0, np.inf]])
    slope, intercept, r2 = fit_diffusion(t, d)
    assert slope == pytest.approx(2.5, abs=0.01)
    assert intercept == pytest.approx(1.5, abs=0.05)
    assert r2 > 0.999
    assert all(math.isnan(v) for v in fit_diffusion([5, 5], [1.0, 2.0]))
    with pytest.raises(ValueError, match="length"):
        fit_diffusion([1, 2, 3], [1.0, 2.0])


def planted_curve(seed: int = 0):
    """Warm-up for 2 epochs, slope 2.0 at lr 0.1 for epochs 3..16, then lr 0.01 and flat."""
    rng = np.random.default_rng(seed)
    epochs = np.arange(1, 31)
    updates = 7.0 * epochs
    lr = np.where(epochs <= 16, 0.1, 0.01)
    lr[:2] = [0.03, 0.07]
    distance = 2.0 * np.log(updates) + 1.0 + rng.normal(0.0, 0.03, updates.size)
    distance[16:] = distance[15] + 0.01 * np.arange(1, 15)  # almost no motion after the drop
    distance[:2] = [0.5, 1.0]  # warm-up: off the line
    return updates, distance, lr


def test_fit_diffusion_phase_recovers_the_planted_slope():
    updates, distance, lr = planted_curve()
    fit = fit_diffusion_phase(updates, distance, lr)
    assert fit["n_points"] == 14
    assert fit["slope"] == pytest.approx(2.0, rel=0.05)
    assert fit["intercept"] == pytest.approx(1.0, abs=0.2)
    assert fit["r2"] > 0.99
    # Fitting every row (what fit_diffusion does) would miss the slope badly.
    slope_all, _, _ = fit_diffusion(updates, distance)
    assert abs(slope_all - 2.0) > 0.3
    # Order does not matter, and neither do non-finite or non-positive rows.
    perm = np.random.default_rng(1).permutation(updates.size)
    shuffled = fit_diffusion_phase(updates[perm], distance[perm], lr[perm])
    assert shuffled == pytest.approx(fit)
    extra = fit_diffusion_phase(
        [*updates, 0.0, 50.0, 60.0], [*distance, 9.0, math.nan, 99.0], [*lr, 0.1, 0.1, math.inf]
    )
    assert extra == pytest.approx(fit)


def test_fit_diffusion_phase_needs_three_points():
    fit = fit_diffusion_phase([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], [0.1, 0.1, 0.01, 0.01])
    assert fit["n_points"] == 2
    assert all(math.isnan(fit[k]) for k in ("slope", "intercept", "r2"))
    empty = fit_diffusion_phase([], [], [])
    assert empty["n_points"] == 0 and math.isnan(empty["slope"])
    fit = fit_diffusion_phase([1, 2, 4], [0.0, 1.0, 2.0], [0.1, 0.1, 0.1])
    assert fit["n_points"] == 3 and fit["slope"] == pytest.approx(1 / math.log(2))
    with pytest.raises(ValueError, match="differ in length"):
        fit_diffusion_phase([1, 2], [1, 2, 3], [1, 2])


def test_steps_to_target():
    updates, acc = [10, 20, 30, 40], [50.0, 70.0, 90.0, 95.0]
    assert steps_to_target(updates, acc, 80.0) == pytest.approx(25.0)
    assert steps_to_target(updates, acc, 80.0, interpolate=False) == 30.0
    assert steps_to_target(updates, acc, 90.0) == pytest.approx(30.0)
    assert steps_to_target(updates, acc, 40.0) == 10.0  # reached at the first evaluation
    assert math.isnan(steps_to_target(updates, acc, 99.0))
    # First crossing counts, even if accuracy later drops; unsorted rows are sorted.
    assert steps_to_target([40, 10, 30, 20], [60.0, 50.0, 85.0, 70.0], 80.0) == pytest.approx(
        20.0 + 10.0 * 10.0 / 15.0
    )
    # A diverged evaluation never counts as reached; interpolation skips over it.
    assert steps_to_target([10, 20, 30], [50.0, math.nan, 90.0], 70.0) == pytest.approx(20.0)
    assert math.isnan(steps_to_target([10, 20], [math.nan, math.nan], 0.0))
    assert math.isnan(steps_to_target([], [], 50.0))


def test_the_analysis_never_imports_torch():
    # The tables, fits and figures run where torch may be absent (a laptop reading results).
    code = (
        "import sys\n"
        "from tunegap.analysis import fits, plots, formatting, schema, tables, decide\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
