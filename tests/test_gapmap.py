import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tunegap.gapmap import (
    baseline_summary,
    compute_cells,
    curves,
    diffusion_plot,
    error_vs_batch,
    fit_diffusion,
    gap_heatmap,
    markdown_table,
    save_figures,
)
from tunegap.results import build_tables

B0 = 32


def trial(tid, batch, ghost, alpha, rho, seed, acc, *, outcome="completed", baseline=False):
    """A record whose final test accuracy is `acc`, with distance = slope * ln(updates) + 1,
    the slope depending on the batch size (2 for the small batch, 1 for large ones)."""
    per_epoch = math.ceil(8000 / batch)
    slope = 2.0 if batch == B0 else 1.0
    history = []
    if outcome != "error":
        for e in (1, 2, 3):
            updates = e * per_epoch
            test_acc = acc - (3 - e)
            if outcome == "diverged" and e == 3:
                test_acc = math.nan
            history.append(
                {
                    "epoch": e,
                    "updates": updates,
                    "lr": 0.1,
                    "train_loss": 0.3 if not math.isnan(test_acc) else math.nan,
                    "train_acc": 99.0,
                    "test_loss": 0.4,
                    "test_acc": test_acc,
                    "train_test_gap": 99.0 - test_acc,
                    "weight_distance": slope * math.log(updates) + 1.0
                    if not math.isnan(test_acc)
                    else math.nan,
                    "seconds": 0.5,
                    "diverged": outcome == "diverged" and e == 3,
                }
            )
    return {
        "trial_id": tid,
        "mlflow_run_id": None,
        "is_baseline": baseline,
        "config": {
            "workload": "mnist1d-cnn",
            "batch_size": batch,
            "ghost_batch_size": ghost,
            "lr_exponent": alpha,
            "regime_multiplier": rho,
            "seed": seed,
            "epochs": None,
            "base_lr": None,
            "device": "cpu",
            "data_dir": None,
        },
        "resolved": {} if outcome == "error" else {"resolved_multiplier": 1.0},
        "outcome": outcome,
        "error": "boom" if outcome == "error" else None,
        "history": history,
    }


def study_records():
    return [
        # Baseline: 98, 97, 96 -> mean 97, sample std 1.
        trial("b0", 32, None, 0.0, 1.0, 0, 98.0, baseline=True),
        trial("b1", 32, None, 0.0, 1.0, 1, 97.0, baseline=True),
        trial("b2", 32, None, 0.0, 1.0, 2, 96.0, baseline=True),
        # Plain large batch: mean 81, gap 16.
        trial("lb0", 1024, None, 0.0, 1.0, 0, 80.0),
        trial("lb1", 1024, None, 0.0, 1.0, 1, 82.0),
        # All remedies: mean 96.3, gap 0.7 -> closed within std 1, open at tolerance 0.5.
        trial("ra0", 1024, 32, 0.5, "matched", 0, 96.5),
        trial("ra1", 1024, 32, 0.5, "matched", 1, 96.1),
        # Every seed diverged.
        trial("dv0", 1024, 32, 1.0, 1.0, 0, 90.0, outcome="diverged"),
        trial("dv1", 1024, 32, 1.0, 1.0, 1, 90.0, outcome="diverged"),
        # One seed diverged, the other reached 90: gap 7 from the finite seed.
        trial("lr0", 1024, None, 0.5, 1.0, 0, 90.0),
        trial("lr1", 1024, None, 0.5, 1.0, 1, 50.0, outcome="diverged"),
        # Every seed errored.
        trial("er0", 1024, 128, 0.0, 1.0, 0, 0.0, outcome="error"),
        trial("er1", 1024, 128, 0.0, 1.0, 1, 0.0, outcome="error"),
    ]


@pytest.fixture(scope="module")
def tables():
    return build_tables(study_records(), study="test")


@pytest.fixture(scope="module")
def cells(tables):
    cells, tolerance = compute_cells(tables[0])
    assert tolerance == pytest.approx(1.0)
    return cells


def cell(cells, batch, ghost, alpha, rho):
    ghost_match = (
        cells["ghost_batch_size"].isna() if ghost is None else cells["ghost_batch_size"] == ghost
    )
    match = cells[
        (cells["batch_size"] == batch)
        & ghost_match
        & (cells["lr_exponent"] == alpha)
        & (cells["regime_multiplier"] == rho)
    ]
    assert len(match) == 1
    return match.iloc[0]


def test_gap_and_closure_with_the_baseline_spread(cells):
    assert len(cells) == 6
    first = cells.iloc[0]
    assert first["is_baseline"] and first["batch_size"] == 32  # baseline sorts first
    assert first["baseline_test_acc"] == pytest.approx(97.0)
    assert first["tolerance"] == pytest.approx(1.0)
    assert "std" in first["tolerance_rule"]
    assert first["gap"] == pytest.approx(0.0) and first["status"] == "closed"

    plain = cell(cells, 1024, None, 0.0, "1.0")
    assert plain["test_acc_mean"] == pytest.approx(81.0)
    assert plain["test_acc_std"] == pytest.approx(math.sqrt(2.0))
    assert plain["gap"] == pytest.approx(16.0)
    assert plain["status"] == "open" and not plain["closed"]
    assert plain["train_test_gap"] == pytest.approx(99.0 - 81.0)
    assert plain["updates"] == pytest.approx(3 * 8)

    remedies = cell(cells, 1024, 32, 0.5, "matched")
    assert remedies["gap"] == pytest.approx(0.7)
    assert remedies["closed"] and remedies["status"] == "closed"
    assert remedies["n_seeds"] == 2 and remedies["n_used"] == 2


def test_given_tolerance_overrides_the_spread(tables):
    cells, tolerance = compute_cells(tables[0], tolerance=0.5)
    assert tolerance == 0.5
    remedies = cell(cells, 1024, 32, 0.5, "matched")
    assert remedies["status"] == "open" and not remedies["closed"]
    assert (cells["tolerance"] == 0.5).all() and cells["tolerance_rule"].iloc[0] == "given"
    assert cells.attrs["tolerance"] == 0.5
    with pytest.raises(ValueError, match="tolerance"):
        compute_cells(tables[0], tolerance=-1.0)


def test_single_seed_baseline_uses_half_a_point():
    recs = [
        trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True),
        trial("near", 1024, 32, 0.5, 1.0, 0, 96.6),  # gap 0.4: closed
        trial("far", 1024, 64, 0.5, 1.0, 0, 96.4),  # gap 0.6: open
        trial("edge", 1024, 16, 0.5, 1.0, 0, 96.5),  # gap exactly 0.5: closed (<=)
    ]
    cells, tolerance = compute_cells(build_tables(recs, study="s")[0])
    assert tolerance == 0.5
    assert cells["tolerance"].iloc[0] == 0.5
    assert "default" in cells["tolerance_rule"].iloc[0]
    assert math.isnan(cells["baseline_test_acc_std"].iloc[0])
    assert cell(cells, 1024, 32, 0.5, "1.0")["status"] == "closed"
    assert cell(cells, 1024, 64, 0.5, "1.0")["status"] == "open"
    assert cell(cells, 1024, 16, 0.5, "1.0")["gap"] == 0.5
    assert cell(cells, 1024, 16, 0.5, "1.0")["status"] == "closed"
    assert "0.50 points" in baseline_summary(cells)


def test_diverged_and_error_cells(cells):
    dead = cell(cells, 1024, 32, 1.0, "1.0")
    assert dead["status"] == "diverged" and not dead["closed"]
    assert dead["n_diverged"] == 2 and dead["n_used"] == 0
    assert math.isnan(dead["gap"]) and math.isnan(dead["test_acc_mean"])

    half = cell(cells, 1024, None, 0.5, "1.0")
    assert half["n_diverged"] == 1 and half["n_used"] == 1
    assert half["test_acc_mean"] == pytest.approx(90.0)
    assert half["gap"] == pytest.approx(7.0) and half["status"] == "open"

    failed = cell(cells, 1024, 128, 0.0, "1.0")
    assert failed["status"] == "error" and failed["n_error"] == 2
    assert set(cells["status"]) <= {"closed", "open", "diverged", "error"}


def test_no_baseline_is_a_clear_error(tables):
    trials = tables[0].assign(is_baseline=False)
    with pytest.raises(ValueError, match="no baseline"):
        compute_cells(trials)
    only_failed = build_tables(
        [trial("b0", 32, None, 0.0, 1.0, 0, 97.0, baseline=True, outcome="diverged")], study="s"
    )[0]
    with pytest.raises(ValueError, match="none completed"):
        compute_cells(only_failed)


def test_row_order_and_index_of_the_trials_do_not_matter(tables, cells):
    shuffled = tables[0].iloc[::-1]  # reversed, with a descending index
    pd.testing.assert_frame_equal(compute_cells(shuffled)[0], cells)


def test_mixed_workloads_are_refused(tables):
    trials = tables[0].copy()
    trials.loc[0, "workload"] = "cifar10-resnet44"
    with pytest.raises(ValueError, match="mixes workloads"):
        compute_cells(trials)


def test_overrides_split_cells_when_set(tables):
    trials = tables[0].copy()
    assert "base_lr_override" not in compute_cells(trials)[0].columns
    trials.loc[trials["trial_id"] == "lb1", "base_lr_override"] = 0.2
    cells, _ = compute_cells(trials)
    assert "base_lr_override" in cells.columns
    assert len(cells) == 7  # lb0 and lb1 are now different cells


def test_heatmap_shows_diverged_error_closed_and_bn(cells):
    fig = gap_heatmap(
        cells,
        rows=["batch_size", "lr_exponent"],
        cols=["ghost_batch_size", "regime_multiplier"],
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    texts = {(t.get_position()[0], t.get_position()[1]): t.get_text() for t in ax.texts}
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    # Numbers first, "matched" after them, plain BatchNorm last.
    assert xlabels == ["32 / 1", "32 / matched", "128 / 1", "BN / 1"]
    assert ylabels == ["32 / 0", "1024 / 0", "1024 / 0.5", "1024 / 1"]

    def at(row_label, col_label):
        return texts.get((xlabels.index(col_label), ylabels.index(row_label)))

    assert at("1024 / 1", "32 / 1") == "diverged"
    assert at("1024 / 0", "128 / 1") == "error"
    assert at("1024 / 0.5", "32 / matched") == "+0.70 ✓"
    assert at("1024 / 0", "BN / 1") == "+16.00"
    assert at("1024 / 0.5", "BN / 1") == "+7.00\n(1 failed)"
    assert at("32 / 0", "BN / 1").startswith("+0.00 ✓\nbaseline")
    # Diverged and error squares are drawn (hatched), not left missing.
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 2
    assert at("32 / 0", "32 / 1") is None  # a combination no trial ran stays blank


def test_heatmap_refuses_overlapping_cells(cells):
    with pytest.raises(ValueError, match="lr_exponent"):
        gap_heatmap(cells)  # batch x ghost: several exponents share a square


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


def test_diffusion_plot_has_log_axis_and_slopes_in_the_legend(tables):
    trials, epochs = tables
    fig = diffusion_plot(epochs, trials)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    # Groups: (32, 0), (1024, 0), (1024, 0.5), (1024, 1); the error cell has no epochs but
    # shares (1024, 0) with the plain large batch.
    assert len(labels) == 4
    assert labels[0].startswith("B=32, α=0: slope 2 ")
    assert all("slope 1 " in label for label in labels[1:3])


def test_curves_one_line_per_cell(tables):
    trials, epochs = tables
    fig = curves(epochs, trials, hue="regime_multiplier", logx=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    # Six cells, one of which (all errors) never reported an epoch.
    assert len(ax.lines) == 5
    baseline = next(line for line in ax.lines if line.get_label().startswith("B=32,"))
    assert list(baseline.get_ydata()) == pytest.approx([95.0, 96.0, 97.0])
    assert list(baseline.get_xdata()) == [250, 500, 750]
    # Half the seeds diverged: the line follows the finished seed, without a jump.
    half = next(line for line in ax.lines if line.get_label() == "B=1024, ghost=BN, α=0.5, ρ=1")
    assert list(half.get_ydata()) == pytest.approx([88.0, 89.0, 90.0])
    # A cell whose seeds all diverged is drawn up to the divergence.
    dead = next(line for line in ax.lines if line.get_label() == "B=1024, ghost=32, α=1, ρ=1")
    assert list(dead.get_ydata())[:2] == pytest.approx([88.0, 89.0])
    assert math.isnan(dead.get_ydata()[2])
    by_epoch = curves(epochs, trials, x="epoch", y="weight_distance").axes[0]
    assert list(by_epoch.lines[0].get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="no column 'nope'"):
        curves(epochs, trials, y="nope")


def test_error_vs_batch_one_line_per_remedy(cells):
    fig = error_vs_batch(cells, hue=["ghost_batch_size", "lr_exponent", "regime_multiplier"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "1024"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "ghost=BN, α=0, ρ=1" in labels
    assert "small-batch baseline" in labels
    assert len(labels) == 6  # five remedy combinations + the baseline line
    line = next(c for c in ax.containers if c.get_label() == "ghost=BN, α=0, ρ=1")
    assert list(line.lines[0].get_ydata()) == pytest.approx([3.0, 19.0])


def test_error_vs_batch_with_a_made_up_hue_and_filtered_cells(cells):
    # What the batch_size study does: a "remedy" column, labelled by value alone.
    cells = cells.assign(remedy=["SB", "+all", "+LR", "+GBN", "LB", "+LR"])
    ax = error_vs_batch(cells, hue="remedy").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted(["+GBN", "+LR", "+all", "LB", "SB", "small-batch baseline"])
    # A heatmap of the non-baseline cells still knows the tolerance and the baseline.
    grid = gap_heatmap(
        cells[~cells["is_baseline"]],
        rows=["batch_size", "lr_exponent"],
        cols=["ghost_batch_size", "regime_multiplier"],
    )
    assert "1.00 pts" in grid.axes[0].get_title()


def test_cells_carry_95_intervals_and_welch_against_the_baseline(tables):
    from scipy import stats

    trials, _ = tables
    cells, tol = compute_cells(trials)
    base = trials[trials["is_baseline"] & (trials["outcome"] == "completed")]["test_acc"]
    cell = cells[(cells["batch_size"] == 1024) & (cells["regime_multiplier"] == "matched")].iloc[0]
    seeds = trials[(trials["batch_size"] == 1024) & (trials["regime_multiplier"] == "matched")]
    acc = seeds["test_acc"]
    welch = stats.ttest_ind(base, acc, equal_var=False)
    assert cell["p_value"] == pytest.approx(welch.pvalue)
    low, high = stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=stats.sem(acc))
    assert (cell["test_acc_ci95_low"], cell["test_acc_ci95_high"]) == pytest.approx((low, high))
    assert cell["gap_ci95_low"] < cell["gap"] < cell["gap_ci95_high"]
    # Closed on the point estimate, but 2 seeds cannot show it at 95% confidence.
    assert cell["closed"] and not cell["closed_confident"]
    assert cell["gap_ci95_high"] > tol
    one_seed = cells[cells["n_used"] == 1].iloc[0]
    assert math.isnan(one_seed["p_value"]) and math.isnan(one_seed["test_acc_ci95_low"])


def test_markdown_table_rows(cells):
    table = markdown_table(cells)
    assert table.splitlines()[0].endswith("| 95% interval | gap (pts) | Welch p | status |")
    columns = ["batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier", "seeds",
               "test_acc", "gap", "status"]
    table = markdown_table(cells, columns=columns)
    lines = table.splitlines()
    assert lines[0] == (
        "| batch | ghost | lr exponent | multiplier | seeds | test acc (%) | gap (pts) | status |"
    )
    assert len(lines) == 2 + 6
    assert lines[2] == "| 32 | BN | 0 | 1 | 3 | 97.00 ± 1.00 | +0.00 | baseline |"
    assert "| 1024 | 32 | 0.5 | matched | 2 | 96.30 ± 0.28 | +0.70 | closed |" in lines
    assert "| 1024 | 32 | 1 | 1 | 0/2 | — | — | diverged |" in lines
    assert "| 1024 | BN | 0.5 | 1 | 1/2 | 90.00 | +7.00 | open |" in lines
    assert "| 1024 | 128 | 0 | 1 | 0/2 | — | — | error |" in lines
    short = markdown_table(cells, columns=["batch_size", "updates"])
    assert short.splitlines()[2] == "| 32 | 750 |"
    with pytest.raises(ValueError, match="unknown table column"):
        markdown_table(cells, columns=["batch_size", "colour"])


def test_save_figures_writes_pngs_without_missing_glyphs(tmp_path, tables, cells):
    trials, epochs = tables
    with warnings.catch_warnings():
        # A missing glyph (✓, α, ρ, ±) only warns; make it fail here.
        warnings.simplefilter("error")
        figs = {
            "gap_map": gap_heatmap(
                cells,
                rows=["batch_size", "lr_exponent"],
                cols=["ghost_batch_size", "regime_multiplier"],
            ),
            "curves": curves(epochs, trials),
            "diffusion": diffusion_plot(epochs, trials),
            "error_vs_batch": error_vs_batch(cells),
        }
        paths = save_figures(figs, tmp_path / "figs")
    assert [p.name for p in paths] == [
        "gap_map.png",
        "curves.png",
        "diffusion.png",
        "error_vs_batch.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5000
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in paths)
    assert all(not fig.axes for fig in figs.values())  # closed and cleared
    with pytest.raises(ValueError, match="plain file names"):
        save_figures({"../escape": Figure()}, tmp_path)


def test_cells_from_parquet_equal_cells_from_memory(tmp_path, tables, cells):
    from tunegap.results import read_tables, write_tables

    write_tables(*tables, tmp_path)
    again, _ = compute_cells(read_tables(tmp_path)[0])
    pd.testing.assert_frame_equal(again, cells)
