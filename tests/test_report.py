import pytest
from gap_records import study_records

from tunegap.analysis.report import describe, format_value, markdown_table
from tunegap.analysis.tables import build_tables
from tunegap.analysis.verdict import compute_cells


@pytest.fixture(scope="module")
def cells():
    return compute_cells(build_tables(study_records(), study="test")[0])[0]


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


def test_knob_values_read_the_same_everywhere():
    assert format_value("ghost_batch_size", None) == "BN"
    assert format_value("ghost_batch_size", float("nan")) == "BN"
    assert format_value("base_lr_override", None) == "—"
    assert format_value("regime_multiplier", "4.0") == "4"
    assert format_value("regime_multiplier", "matched") == "matched"
    assert format_value("lr_exponent", 0.5) == "0.5" and format_value("batch_size", 1024.0) == "1024"
    values = {"batch_size": 1024, "ghost_batch_size": None, "lr_exponent": 0.5, "remedy": "LB"}
    assert describe(values, list(values)) == "B=1024, ghost=BN, α=0.5, remedy=LB"
