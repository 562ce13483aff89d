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
    study = build(["--batch-sizes", "128,256", "--epochs", "1", "--baseline-epochs", "1",
                   "--margin", "1.0",
                   "--min-seeds", "2", "--max-seeds", "2"])
    outcome = run_study(study, options=RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
        device="cpu", data_dir=str(data_dir), quiet=True))
    table = pd.read_csv(outcome.run_dir / frontier.FRONTIER_FILE)
    assert list(table["batch_size"]) == [128, 256]
    assert {"largest_open_multiplier", "smallest_closed_multiplier", "smallest_closed_updates",
            "bracket", "undecided_between", "multipliers_probed"} <= set(table.columns)
    assert (outcome.run_dir / "frontier.png").exists()
    cells = outcome.cells[~outcome.cells["is_baseline"]]
    for row in table.itertuples():
        probes = cells[cells["batch_size"] == row.batch_size].sort_values("multiplier")
        # Matched is always probed first; nothing above matched ever is.
        assert probes["multiplier"].max() == row.matched_multiplier
        verdict = dict(zip(probes["multiplier"], probes["verdict"], strict=True))
        # The bracket re-walked by hand: closed from the top while closed, open from the
        # bottom while open.
        grid = sorted(verdict)
        closed_run = []
        for m in reversed(grid):
            if verdict[m] != "closed":
                break
            closed_run.append(m)
        open_run = []
        for m in grid:
            if verdict[m] != "open":
                break
            open_run.append(m)
        want_closed = min(closed_run) if closed_run else math.nan
        want_open = max(open_run) if open_run else math.nan
        assert (row.smallest_closed_multiplier == want_closed
                or (math.isnan(row.smallest_closed_multiplier) and math.isnan(want_closed)))
        assert (row.largest_open_multiplier == want_open
                or (math.isnan(row.largest_open_multiplier) and math.isnan(want_open)))
        if closed_run:
            assert row.smallest_closed_updates == probes.loc[
                probes["multiplier"] == want_closed, "updates"].iloc[0]
    assert set(outcome.trials["outcome"]) == {"completed"}
