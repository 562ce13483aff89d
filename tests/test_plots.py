import math
import os
import warnings

import pytest
from gap_records import study_records
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tunegap.analysis.cells import compute_cells
from tunegap.analysis.figure_files import save_figures
from tunegap.analysis.plots import curves, diffusion_plot, error_vs_batch, gap_heatmap
from tunegap.analysis.tables import build_tables


@pytest.fixture(scope="module")
def tables():
    return build_tables(study_records(), study="test")


@pytest.fixture(scope="module")
def cells(tables):
    # At a 3-point margin the map has every verdict: closed, open, inconclusive (one seed),
    # diverged and error.
    return compute_cells(tables[0], margin=3.0)


def test_heatmap_writes_each_verdict_and_bn(cells):
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
    assert at("1024 / 0.5", "32 / matched") == "+0.70\nclosed"
    assert at("1024 / 0", "BN / 1") == "+16.00\nopen"
    assert at("1024 / 0.5", "BN / 1") == "+7.00\n?\n(1 failed)"  # one seed: inconclusive
    assert at("32 / 0", "BN / 1") == "+0.00\nbaseline"
    # Only the closed square has the bold border.
    borders = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert len(borders) == 1 and borders[0].get_xy() == pytest.approx(
        (xlabels.index("32 / matched") - 0.46, ylabels.index("1024 / 0.5") - 0.46))
    title = ax.get_title()
    assert "margin 3.00 pts" in title and "? inconclusive" in title and "final-epoch" in title
    # Diverged and error squares are drawn (hatched), not left missing.
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 2
    assert at("32 / 0", "32 / 1") is None  # a combination no trial ran stays blank


def test_heatmap_refuses_overlapping_cells(cells):
    with pytest.raises(ValueError, match="lr_exponent"):
        gap_heatmap(cells)  # batch x ghost: several exponents share a square
    with pytest.raises(ValueError, match="verdict_holm"):
        gap_heatmap(cells, rows=["batch_size", "lr_exponent"],
                    cols=["ghost_batch_size", "regime_multiplier"], verdict="status")


def test_heatmap_of_holm_verdicts_demotes_what_holm_demotes(tables):
    # At a 2.3-point margin the 2-seed cell is closed on its own (p just under 0.05), but not
    # once Holm counts the map's 2 decidable cells.
    cells = compute_cells(tables[0], margin=2.3)
    remedies = cells[cells["regime_multiplier"] == "matched"].iloc[0]
    assert remedies["verdict"] == "closed" and remedies["verdict_holm"] == "inconclusive"
    layout = {"rows": ["batch_size", "lr_exponent"], "cols": ["ghost_batch_size",
                                                            "regime_multiplier"]}
    per_cell = {t.get_text() for t in gap_heatmap(cells, **layout).axes[0].texts}
    holm = gap_heatmap(cells, verdict="verdict_holm", **layout).axes[0]
    assert "+0.70\nclosed" in per_cell
    assert "+0.70\n?" in {t.get_text() for t in holm.texts}
    assert "Holm over the map" in holm.get_title()


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
    # A heatmap of the non-baseline cells still knows the margin and the baseline.
    grid = gap_heatmap(
        cells[~cells["is_baseline"]],
        rows=["batch_size", "lr_exponent"],
        cols=["ghost_batch_size", "regime_multiplier"],
        title="a study's own title",
    )
    title = grid.axes[0].get_title()
    assert title.startswith("a study's own title\n") and "3.00 pts" in title


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


def test_a_figure_that_fails_to_save_keeps_the_old_png_and_leaves_no_temp(tmp_path):
    class Broken(Figure):
        def savefig(self, fname, **kw):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG half")
            raise OSError("disk full")

    save_figures({"map": Figure()}, tmp_path)
    before = (tmp_path / "map.png").read_bytes()
    with pytest.raises(OSError, match="disk full"):
        save_figures({"map": Broken()}, tmp_path)
    assert (tmp_path / "map.png").read_bytes() == before
    assert os.listdir(tmp_path) == ["map.png"]
