"""The last good copy of Tune's state files, and putting it back over a file cut short."""

from __future__ import annotations

import json
import pickle

import pytest

from tunegap.runner.state_copies import (
    GOOD_DIR,
    StateUnrecoverable,
    keep_good_copies,
    reads_whole,
    repair_state,
)

STATE = "experiment_state-2026-12-05_10-00-00.json"
SEARCHER = "searcher-state-2026-12-05_10-00-00.pkl"


def write_state(run_dir, finished: int) -> bytes:
    trials = [[json.dumps({"trial_id": f"t{i}", "status": "TERMINATED" if i < finished
                           else "RUNNING"}), "{}"] for i in range(3)]
    text = json.dumps({"trial_data": trials, "runner_data": {}}).encode()
    (run_dir / STATE).write_bytes(text)
    (run_dir / SEARCHER).write_bytes(pickle.dumps({"seeds": [0, 1, 2]}))
    return text


def test_only_whole_files_are_kept_and_a_cut_one_never_replaces_its_copy(tmp_path):
    good_text = write_state(tmp_path, finished=1)
    seen: dict = {}
    assert keep_good_copies(tmp_path, seen) == 2
    assert keep_good_copies(tmp_path, seen) == 0  # unchanged: not read again
    newer = write_state(tmp_path, finished=2)
    (tmp_path / STATE).write_bytes(newer[: len(newer) // 2])  # cut while being written
    assert not reads_whole(tmp_path / STATE)
    keep_good_copies(tmp_path, seen)
    assert (tmp_path / GOOD_DIR / STATE).read_bytes() == good_text


def test_resume_puts_back_the_good_copy_and_says_what_it_recovered(tmp_path):
    good_text = write_state(tmp_path, finished=1)
    keep_good_copies(tmp_path)
    cut = (tmp_path / SEARCHER).read_bytes()
    (tmp_path / SEARCHER).write_bytes(cut[:5])
    (tmp_path / STATE).write_bytes(good_text[:40])
    lines = repair_state(tmp_path)
    assert len(lines) == 2
    assert lines[0].startswith(f"--resume: {STATE} was cut short (a killed driver or a full "
                               "disk): put back its last good copy, saved at ")
    assert lines[0].endswith("with 1 of 3 trials finished in it; the others resume from "
                             "their newest checkpoint")
    assert (tmp_path / STATE).read_bytes() == good_text and reads_whole(tmp_path / SEARCHER)
    assert repair_state(tmp_path) == []  # whole now: nothing to do


def test_a_cut_file_without_a_good_copy_is_one_line(tmp_path):
    text = write_state(tmp_path, finished=0)
    (tmp_path / STATE).write_bytes(text[:10])
    with pytest.raises(StateUnrecoverable, match="start the study again without --resume"):
        repair_state(tmp_path)


def test_a_pickled_searcher_state_named_json_reads_whole(tmp_path):
    # Tune's SearchGenerator pickles its state into search_gen_state-*.json.
    state = tmp_path / "search_gen_state-2026-12-05_10-00-00.json"
    state.write_bytes(pickle.dumps({"counter": 3}))
    assert reads_whole(state)
    keep_good_copies(tmp_path)
    state.write_bytes(state.read_bytes()[:7])
    assert not reads_whole(state)
    (line,) = repair_state(tmp_path)
    assert "search_gen_state" in line and reads_whole(state)
