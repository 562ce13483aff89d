"""The adaptive searchers, driven as Tune drives them: suggest, results, completion.

Each trial's accuracy is drawn from a normal distribution per cell (seeded), so whether a
cell is decided depends on real Welch intervals (`decide_gap`), not on a stub.
"""

from __future__ import annotations

import json
import math
import random

import pytest
from ray.tune.search import Searcher

from tunegap.analysis.decide import cell_key, decide_gap
from tunegap.analysis.tables import best_epoch_test_acc
from tunegap.runner.adaptive import (
    FixedSequences,
    FrontierSearch,
    SeedsUntilDecided,
    probe_config,
)
from tunegap.runner.error_rates import drive_searcher
from tunegap.study_checks import check_seed_budget, frontier_budget

BASE = {"workload": "w", "batch_size": 32, "ghost_batch_size": None, "regime_multiplier": 1.0}


def cell(batch_size: int, multiplier: float = 1.0) -> dict:
    return {**BASE, "batch_size": batch_size, "ghost_batch_size": 32,
            "regime_multiplier": float(multiplier)}


def drive(searcher: Searcher, accuracy, *, concurrency: int = 2, limit: int = 500) -> list[dict]:
    """Run the searcher to FINISHED with `concurrency` trials at once; `accuracy(config)`
    gives a finished trial's test accuracy. Returns every config it suggested, in order."""
    rng = random.Random(0)

    def finish(trial_id: str, config: dict) -> None:
        acc = accuracy(config)
        searcher.on_trial_result(trial_id, {"test_acc": acc + 1.0})
        searcher.on_trial_complete(trial_id, {"test_acc": acc, "diverged": False})

    return drive_searcher(searcher, finish, pick=rng.choice, concurrency=concurrency,
                          limit=limit)


def normal_accuracy(means: dict[int, float], sd: float):
    def accuracy(config: dict) -> float:
        rng = random.Random(json.dumps(config, sort_keys=True))
        return rng.gauss(means[config["batch_size"]], sd)

    return accuracy


def seeds_by_cell(suggested: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for config in suggested:
        out.setdefault(cell_key(config), []).append(config["seed"])
    return out


def test_seeds_until_decided_judges_only_at_the_planned_looks():
    cells = [cell(256), cell(512), cell(1024)]
    means = {32: 97.0, 256: 96.9, 512: 92.0, 1024: 96.5}  # closed, open, hard to decide
    first = [{**c, "seed": s} for s in range(3) for c in [BASE, *cells]]
    searcher = SeedsUntilDecided(first, {**BASE, "seed": 0}, margin=1.0, max_seeds=8)
    design = searcher.ledger.design
    assert design.looks == (3, 6, 8)
    suggested = drive(searcher, normal_accuracy(means, 0.6))
    seeds = seeds_by_cell(suggested)
    accuracy = normal_accuracy(means, 0.6)
    base_seeds = seeds[cell_key(BASE)]
    for c in cells:
        got = seeds[cell_key(c)]
        assert got == list(range(len(got))), "seeds are 0, 1, 2, ... without gaps or repeats"
        assert len(got) in design.looks, "a cell stops only at a planned look"
        assert len(base_seeds) >= len(got), "the baseline follows each cell to its look"
        # At the look it stopped at (with the baseline's seeds up to that look), the cell
        # was decided or at the margin, or the last look was reached.
        base = [accuracy({**BASE, "seed": s}) for s in base_seeds[:len(got)]]
        decision = decide_gap(base, [accuracy({**c, "seed": s}) for s in got], margin=1.0,
                              confidence=design.confidence)
        assert decision.verdict != "inconclusive" or len(got) == 8
    assert len(seeds[cell_key(cell(512))]) == 3  # open at once: no seed wasted on it
    assert len(seeds[cell_key(cell(1024))]) > 3  # the hard one got more


def test_the_baseline_grows_with_the_cell_to_each_look():
    # The baseline spreads far more than the cell: the cell is undecided at the first look.
    def accuracy(config: dict) -> float:
        rng = random.Random(json.dumps(config, sort_keys=True))
        sd = 2.0 if config["batch_size"] == 32 else 0.05
        return rng.gauss(97.0 if config["batch_size"] == 32 else 96.2, sd)

    first = [{**c, "seed": s} for s in range(3) for c in [BASE, cell(256)]]
    searcher = SeedsUntilDecided(first, {**BASE, "seed": 0}, margin=1.0, max_seeds=6)
    suggested = drive(searcher, accuracy)
    extra = suggested[len(first):]
    assert extra, "an inconclusive cell got no more seeds"
    seeds = seeds_by_cell(suggested)
    assert len(seeds[cell_key(BASE)]) == len(seeds[cell_key(cell(256))]) == 6


def test_state_survives_save_and_restore_midway(tmp_path):
    means = {32: 97.0, 256: 96.5}
    first = [{**c, "seed": s} for s in range(3) for c in [BASE, cell(256)]]
    searcher = SeedsUntilDecided(first, {**BASE, "seed": 0}, margin=1.0, max_seeds=8)
    accuracy = normal_accuracy(means, 0.8)
    for n in range(4):
        config = searcher.suggest(f"t{n}")
        searcher.on_trial_complete(f"t{n}", {"test_acc": accuracy(config)})
    running = searcher.suggest("t4")
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    again = SeedsUntilDecided([], {**BASE, "seed": 0}, margin=1.0, max_seeds=8)
    again.restore(str(path))
    # The trial that was running when the driver died completes after the restore.
    again.on_trial_complete("t4", {"test_acc": accuracy(running)})
    rest = drive(again, accuracy)
    seeds = seeds_by_cell([*[{**c} for c in first[:5]], *rest])
    for got in seeds.values():
        assert sorted(got) == list(range(len(got)))


def test_a_ledger_saved_before_it_kept_epochs_resumes(tmp_path):
    # A run started by an earlier release pickled its ledger with each trial's best test
    # accuracy ("best") and no epochs; --resume must go on with it, not fail.
    import pickle

    first = [{**c, "seed": s} for s in range(3) for c in [BASE, cell(256)]]
    searcher = SeedsUntilDecided(first, {**BASE, "seed": 0}, margin=1.0, max_seeds=6,
                                 accuracy="best")
    config = searcher.suggest("t0")
    path = tmp_path / "old-searcher.pkl"
    searcher.save(str(path))
    saved = pickle.loads(path.read_bytes())
    del saved["ledger"]["epochs"]
    saved["ledger"]["best"] = {"t0": 97.0}
    path.write_bytes(pickle.dumps(saved))
    again = SeedsUntilDecided([], {**BASE, "seed": 0}, margin=1.0, max_seeds=6, accuracy="best")
    again.restore(str(path))
    # Tune's tuner.pkl holds the searcher itself: its ledger unpickled, no __init__ run.
    old_ledger = searcher.ledger
    del old_ledger.__dict__["epochs"]
    old_ledger.__dict__["best"] = {"t0": 97.0}
    unpickled = SeedsUntilDecided([], {**BASE, "seed": 0}, margin=1.0, max_seeds=6)
    unpickled.ledger = pickle.loads(pickle.dumps(old_ledger))
    for resumed in (again, unpickled):
        resumed.on_trial_result("t0", {"epoch": 1, "test_acc": 96.0, "val_acc": 95.0})
        resumed.on_trial_complete("t0", {"epoch": 2, "test_acc": 95.5, "val_acc": 94.0,
                                         "diverged": False})
        assert resumed.ledger.cells[cell_key(config)].values[config["seed"]] == 96.0


def test_a_diverging_cell_stops_and_errors_count_as_unusable():
    first = [{**c, "seed": s} for s in range(3) for c in [BASE, cell(2048)]]
    searcher = SeedsUntilDecided(first, {**BASE, "seed": 0}, margin=0.5, max_seeds=8)
    n, suggested = 0, []
    while (out := searcher.suggest(f"t{n}")) not in (None, Searcher.FINISHED):
        suggested.append(out)
        diverged = out["batch_size"] == 2048
        searcher.on_trial_complete(f"t{n}", {"test_acc": math.nan if diverged else 97.0 + n / 100,
                                              "diverged": diverged})
        n += 1
    assert out == Searcher.FINISHED
    assert len(seeds_by_cell(suggested)[cell_key(cell(2048))]) == 3


def test_best_accuracy_is_judged_at_the_best_validation_epoch_as_the_trials_table_does():
    # Each trial peaks on the test set at epoch 2 but on the validation split at epoch 3:
    # the searcher must judge the test accuracy at epoch 3, as `best_test_acc` does, never
    # the highest test accuracy (that would peek at the test set).
    first = [{**c, "seed": s} for s in range(3) for c in [BASE, cell(256)]]
    searcher = SeedsUntilDecided(first, {**BASE, "seed": 0}, margin=1.0, max_seeds=3,
                                 accuracy="best")
    histories = {}
    for n in range(len(first)):
        config = searcher.suggest(f"t{n}")
        shift = config["seed"] / 10 - (config["batch_size"] == 256)
        history = [{"epoch": 1, "test_acc": 90.0 + shift, "val_acc": 89.0},
                   {"epoch": 2, "test_acc": 97.0 + shift, "val_acc": 90.0},
                   {"epoch": 3, "test_acc": 95.0 + shift, "val_acc": 93.0},
                   {"epoch": 4, "test_acc": 94.0 + shift, "val_acc": 92.0}]
        # A restored trial reports epoch 2 again, from its checkpoint: the later report wins.
        history_sent = [*history[:3], {**history[1], "val_acc": 91.0}, history[3]]
        for row in history_sent[:-1]:
            searcher.on_trial_result(f"t{n}", row)
        searcher.on_trial_complete(f"t{n}", {**history[-1], "diverged": False})
        histories[(cell_key(config), config["seed"])] = history
    for (key, seed), history in histories.items():
        judged = searcher.ledger.cells[key].values[seed]
        assert judged == best_epoch_test_acc(history) == history[2]["test_acc"]


def test_frontier_brackets_with_two_fixed_sequences():
    # The gap closes from multiplier 5 on at B=256 (matched 8); never at B=1024 (matched 32).
    def accuracy(config: dict) -> float:
        rng = random.Random(json.dumps(config, sort_keys=True))
        if config["batch_size"] == 32:
            return rng.gauss(97.0, 0.2)
        m = config["regime_multiplier"]
        closes = config["batch_size"] == 256 and m >= 5
        return rng.gauss(97.0 if closes else 94.0, 0.2)

    template = {**BASE, "ghost_batch_size": 32, "lr_exponent": 0.5}
    searcher = FrontierSearch([256, 1024], 32, template, {**BASE, "seed": 0},
                              margin=1.0, min_seeds=3, max_seeds=6)
    suggested = drive(searcher, accuracy)
    probed = {b: sorted({c["regime_multiplier"] for c in suggested if c["batch_size"] == b})
              for b in (256, 1024)}
    # Closed from matched down (8 closed, 4 not: stop); open from 1 up (1, 2, 4 open, 8 not).
    assert probed[256] == [1.0, 2.0, 4.0, 8.0]
    # Never closed: the closed sequence stops at matched, the open one climbs to it.
    assert probed[1024] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    line = {ln.batch_size: ln for ln in searcher.lines}
    assert line[256].bracket() == (4, 8)
    assert line[1024].bracket() == (32, None)
    assert all(ln.done for ln in searcher.lines)
    assert len(suggested) <= frontier_budget([256, 1024], 32, 6)


def test_fixed_sequences_stop_at_the_first_failure():
    line = FixedSequences(1024, 32)
    assert line.multipliers == [1, 2, 4, 8, 16, 32]
    assert line.next_multipliers() == [32, 1]  # both sequences' first probes, at once
    line.settle(32, "closed")
    assert line.next_multipliers() == [16, 1]
    line.settle(16, "inconclusive")  # the closed sequence stops here
    assert line.next_multipliers() == [1]
    line.settle(1, "open")
    line.settle(2, "at the margin")  # and the open one here
    assert line.done and line.next_multipliers() == []
    assert line.bracket() == (1, 32)
    assert FixedSequences(96, 3).multipliers == [1, 2, 3]


def test_both_sequences_probe_at_once_to_fill_the_slots():
    searcher = FrontierSearch([1024], 32, {**BASE, "ghost_batch_size": 32, "lr_exponent": 0.5},
                              {**BASE, "seed": 0}, margin=1.0, min_seeds=3, max_seeds=6)
    handed = []
    while isinstance(out := searcher.suggest(f"t{len(handed)}"), dict):
        handed.append(out)
    # With no result yet: the baseline's first look, then the first look of matched (the
    # closed sequence) and of 1 (the open one), not one probe with idle slots beside it.
    assert [(c["batch_size"], c["regime_multiplier"], c["seed"]) for c in handed[3:]] == [
        (1024, 32.0, 0), (1024, 32.0, 1), (1024, 32.0, 2),
        (1024, 1.0, 0), (1024, 1.0, 1), (1024, 1.0, 2)]
    assert out is None  # the rest waits for results
    line = FixedSequences(96, 3)
    line.settle(3, "closed")
    line.settle(1, "open")
    assert line.next_multipliers() == [2]  # where the sequences meet, one probe serves both


def test_probe_config_and_seed_budget_checks():
    template = {**BASE, "ghost_batch_size": 256, "lr_exponent": 0.5}
    assert probe_config(template, 256, 3)["ghost_batch_size"] is None  # ghost >= batch: BN
    assert probe_config(template, 1024, 3)["regime_multiplier"] == 3.0
    check_seed_budget(3, 8)
    with pytest.raises(ValueError, match="--min-seeds"):
        check_seed_budget(1, 8)
    with pytest.raises(ValueError, match="--max-seeds"):
        check_seed_budget(3, 2)


@pytest.mark.slow
def test_seeds_auto_through_a_real_study(tmp_path, data_dir, ray_session):
    from tunegap import RunOptions, Study, run_study

    study = Study(name="auto_seeds", workload="mnist1d-cnn", epochs=1, baseline_epochs=1,
                  seeds="auto",
                  min_seeds=2, max_seeds=3, margin=1.0,
                  grid={"batch_size": (256, 2048), "lr_exponent": (0.5,)})
    outcome = run_study(study, options=RunOptions(
        storage_path=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/m.db",
        device="cpu", data_dir=str(data_dir), quiet=True))
    trials, cells = outcome.trials, outcome.cells
    assert trials.groupby(["batch_size", "ghost_batch_size", "lr_exponent"], dropna=False)[
        "seed"].apply(lambda s: sorted(s) == list(range(len(s)))).all()
    for row in cells[~cells["is_baseline"]].itertuples():
        assert row.n_seeds in (2, 3)  # the planned looks of min 2, max 3
        assert row.looks == "2,3"
        # A cell stops short of the last look only once it is decided or at the margin.
        assert row.verdict != "inconclusive" or row.n_seeds == 3
    assert cells.loc[cells["batch_size"] == 2048, "verdict"].item() == "open"
    # The whole run expanded the study's grid once.
    assert study.expansions == 1
