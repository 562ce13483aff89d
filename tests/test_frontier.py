"""The frontier study end to end: real Ray, real training, real tables; and its CLI checks."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tunegap import RunOptions, run_study
from tunegap.studies import frontier


def build(argv: list[str]):
    return frontier.build(frontier.parser().parse_args(argv))


def test_the_frontier_refuses_what_it_cannot_bisect():
    with pytest.raises(ValueError, match="not above the small batch"):
        build(["--batch-sizes", "32,256"])
    with pytest.raises(ValueError, match="--seeds auto"):
        build(["--seeds", "3"])
    study = build(["--batch-sizes", "256,1024", "--max-seeds", "3"])
    assert study.search == "frontier" and study.seeds == "auto" and study.max_seeds == 3
    # Its first trials: the baseline and each batch size at its matched multiplier.
    firsts = {(c.batch_size, c.regime_multiplier) for c in study.trial_configs()}
    assert firsts == {(32, 1.0), (256, 8.0), (1024, 32.0)}


@pytest.mark.slow
def test_frontier_study_writes_one_row_per_batch_size(tmp_path, data_dir, ray_session):
    study = build(["--batch-sizes", "128,256", "--epochs", "1", "--margin", "1.0",
                   "--min-seeds", "2", "--max-seeds", "2"])
    outcome = run_study(study, RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
        device="cpu", data_dir=str(data_dir), quiet=True))
    table = pd.read_csv(outcome.run_dir / frontier.FRONTIER_FILE)
    assert list(table["batch_size"]) == [128, 256]
    assert {"closing_multiplier", "closing_updates", "closing_epochs", "seeds", "verdict",
            "multipliers_probed"} <= set(table.columns)
    assert (outcome.run_dir / "frontier.png").exists()
    cells = outcome.cells[~outcome.cells["is_baseline"]]
    for row in table.itertuples():
        probes = cells[cells["batch_size"] == row.batch_size]
        # Matched is always probed first; nothing above matched ever is.
        assert probes["multiplier"].max() == row.matched_multiplier
        closed = probes[probes["verdict"] == "closed"]
        if math.isnan(row.closing_multiplier):
            assert closed.empty and row.verdict.startswith("not closed")
        else:
            # The closing multiplier is the smallest closed probe, and the row's numbers are
            # that cell's.
            assert row.closing_multiplier == closed["multiplier"].min()
            best = closed.loc[closed["multiplier"].idxmin()]
            assert row.closing_updates == best["updates"]
    assert set(outcome.trials["outcome"]) == {"completed"}
