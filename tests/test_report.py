import pytest
from gap_records import study_records

from tunegap.analysis.cells import compute_cells
from tunegap.analysis.formatting import describe, format_value, markdown_table
from tunegap.analysis.tables import build_tables
from tunegap.runner.report_text import baseline_summary


@pytest.fixture(scope="module")
def cells():
    return compute_cells(build_tables(study_records(), study="test")[0])


def test_markdown_table_rows(cells):
    table = markdown_table(cells)
    assert table.splitlines()[0].endswith(
        "| gap (pts) | gap interval | verdict | verdict (Holm) | seeds to decide |"
    )
    assert "| seeds used |" in table.splitlines()[0]
    columns = ["batch_size", "ghost_batch_size", "lr_exponent", "regime_multiplier", "seeds",
               "test_acc", "gap", "gap_ci", "verdict", "verdict_holm"]
    table = markdown_table(cells, columns=columns)
    lines = table.splitlines()
    assert lines[0] == (
        "| batch | ghost | lr exponent | multiplier | seeds used | test acc (%) | gap (pts) | "
        "gap interval | verdict | verdict (Holm) |"
    )
    assert lines[1] == "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    assert len(lines) == 2 + 6
    assert lines[2] == "| 32 | BN | 0 | 1 | 3/3 | 97.00 ± 1.00 | +0.00 | — | baseline | baseline |"
    remedies = cells[cells["regime_multiplier"] == "matched"].iloc[0]
    low, high = remedies["gap_ci_low"], remedies["gap_ci_high"]
    assert (
        f"| 1024 | 32 | 0.5 | matched | 2/2 | 96.30 ± 0.28 | +0.70 | [{low:+.2f}, {high:+.2f}] | "
        "inconclusive | inconclusive |"
    ) in lines
    assert "| 1024 | 32 | 1 | 1 | 0/2 | — | — | — | diverged | diverged |" in lines
    assert "| 1024 | BN | 0.5 | 1 | 1/2 | 90.00 | +7.00 | — | inconclusive | inconclusive |" in lines
    assert "| 1024 | 128 | 0 | 1 | 0/2 | — | — | — | error | error |" in lines
    assert "| 1024 | BN | 0 | 1 | 2/2 | 81.00 ± 1.41 | +16.00 | [+12.15, +19.85] | open | open |" in lines
    extra = markdown_table(cells, columns=["batch_size", "seeds_to_decide", "p_value",
                                           "p_value_holm"]).splitlines()
    assert extra[0] == "| batch | seeds to decide | p (closed) | Holm p |"
    assert extra[2] == "| 32 | — | — | — |"
    assert f"| 1024 | {int(remedies['seeds_to_decide'])} | {remedies['p_value']:.3f} | " in (
        "\n".join(extra))
    short = markdown_table(cells, columns=["batch_size", "updates"])
    assert short.splitlines()[2] == "| 32 | 750 |"
    with pytest.raises(ValueError, match="unknown table column"):
        markdown_table(cells, columns=["batch_size", "colour"])
    with pytest.raises(ValueError, match="unknown table column"):
        markdown_table(cells, columns=["status"])  # the old column is gone


def test_summary_states_the_rule_the_margin_and_the_counts(cells):
    from tunegap.runner.report_text import render_summary
    from tunegap.study import Study

    study = Study(name="ghost_size", workload="mnist1d-cnn", grid={"batch_size": (1024,)},
                  margin=0.5, accuracy="best")
    text = render_summary(study, markdown_table(cells), cells, {"completed": 9, "diverged": 3},
                          12.0, 30.0, figures=["gap_map.png"],
                          baseline_sentence=baseline_summary(cells))
    assert (
        "- verdict per cell: Welch 90% interval of gap = baseline - cell (test accuracy at "
        "the epoch of best accuracy on 10% of the training set held out, trained on the rest; "
        "1 seed(s) a side, one look) against the margin 0.5 points declared before "
        "the run: closed if its upper end <= 0.5, open if its lower end > 0.5, at the margin "
        "if neither but no wider than 1, else inconclusive; over the map, Holm at 5% on the "
        "closed tests and, separately, on the open tests (verdict_holm); the Holm families "
        "are the 2 decidable cells"
    ) in text
    assert ("- cells: closed 0, open 1, at the margin 0, inconclusive 2, diverged 1, error 1 "
            "(verdict_holm: closed 0, open 1, at the margin 0, inconclusive 2)") in text
    assert "- decided or at the margin: 1 of 5 cells (20%)" in text
    assert "![gap_map.png](gap_map.png)" in text and "tolerance" not in text


def test_knob_values_read_the_same_everywhere():
    assert format_value("ghost_batch_size", None) == "BN"
    assert format_value("ghost_batch_size", float("nan")) == "BN"
    assert format_value("base_lr_override", None) == "—"
    assert format_value("regime_multiplier", "4.0") == "4"
    assert format_value("regime_multiplier", "matched") == "matched"
    assert format_value("lr_exponent", 0.5) == "0.5" and format_value("batch_size", 1024.0) == "1024"
    values = {"batch_size": 1024, "ghost_batch_size": None, "lr_exponent": 0.5, "remedy": "LB"}
    assert describe(values, list(values)) == "B=1024, ghost=BN, α=0.5, remedy=LB"


@pytest.mark.parametrize("name, where", [
    ("markdown_table", "tunegap.analysis.formatting"),
    ("format_value", "tunegap.analysis.formatting"),
    ("baseline_summary", "tunegap.runner.report_text"),
    ("baseline_warnings", "tunegap.runner.report_text"),
])
def test_an_import_from_the_earlier_report_module_says_where_the_name_went(name, where):
    import importlib

    with pytest.raises(ImportError, match=rf"report\.{name} moved: import it from {where}$"):
        exec(f"from tunegap.analysis.report import {name}", {})
    # ...and the name is there.
    assert hasattr(importlib.import_module(where), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        importlib.import_module("tunegap.analysis.report").nothing  # noqa: B018
