"""The terminal while a study runs: done / running / left, the ETA, and the closing sentence."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from tunegap.runner.progress import ProgressPrinter
from tunegap.runner.report_text import closing_sentence, eta_seconds, format_duration


@dataclass
class Trial:
    """The parts of a Tune trial that `ProgressPrinter` reads."""

    status: str
    seed: int = 0
    last_result: dict = field(default_factory=lambda: {"test_acc": 71.25, "epoch": 2})

    @property
    def config(self) -> dict:
        return {"batch_size": 512, "ghost_batch_size": None, "lr_exponent": 0.5,
                "regime_multiplier": 1.0, "seed": self.seed}


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (45, "45s"), (185, "3m05s"),
                                                (7620, "2h07m")])
def test_durations_read_as_people_write_them(seconds, text):
    assert format_duration(seconds) == text


def test_eta_comes_from_the_trials_finished_here():
    assert eta_seconds(100.0, 0, 5) is None
    assert eta_seconds(100.0, 4, 2) == pytest.approx(50.0)
    assert eta_seconds(100.0, 4, 0) == 0


def test_lines_count_done_running_left_and_give_an_eta(capsys):
    trials = [Trial("RUNNING", s) for s in range(4)]
    printer = ProgressPrinter(4)
    trials[0].status = "TERMINATED"
    printer.on_trial_complete(1, trials, trials[0])
    first = capsys.readouterr().out
    assert first.startswith("[1/4 done, 3 running, 3 left, ETA ")
    assert "B=512 ghost=BN a=0.5 rho=1.0 seed=0: completed test_acc 71.25 epochs 2" in first
    for t in trials[1:]:
        t.status = "TERMINATED"
        printer.on_trial_error(1, trials, t)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("[4/4 done, 0 running, 0 left, all done]") and ": error" in last


def test_a_resumed_study_counts_on_and_an_adaptive_one_says_at_most(capsys):
    trials = [Trial("TERMINATED", 0), Trial("TERMINATED", 1), Trial("RUNNING", 2)]
    printer = ProgressPrinter(6, at_most=True)
    trials[2].status = "TERMINATED"
    printer.on_trial_complete(1, trials, trials[2])
    assert capsys.readouterr().out.startswith("[3/<=6 done, 0 running, <=3 left, ETA ")


def test_quiet_prints_nothing_but_still_counts(capsys):
    trials = [Trial("TERMINATED")]
    printer = ProgressPrinter(1, quiet=True)
    printer.on_trial_complete(1, trials, trials[0])
    assert capsys.readouterr().out == "" and printer.done == 1


def test_the_closing_line_is_a_sentence_not_a_dict():
    cells = pd.DataFrame({"is_baseline": [True, False, False, False],
                          "verdict": ["baseline", "closed", "inconclusive", "diverged"]})
    text = closing_sentence("ghost_size", {"completed": 5, "diverged": 1, "error": 0}, cells,
                            Path("/r/ghost_size/1"))
    assert text == ("ghost_size: 6 trials ran (5 completed, 1 diverged); of 3 cell(s) compared "
                    "with the baseline, 1 closed, 0 open, 1 inconclusive and 1 diverged. "
                    "Tables, map and summary.md are in /r/ghost_size/1")
    assert "{" not in text
