"""How the runner tells an interrupted `Tuner.fit()` from a finished one, with real signals
sent to this process (the whole study under Ctrl-C: tests/test_fault_injection.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tunegap.runner.interrupts import InterruptWatch


def tune_like_handler() -> None:
    """What `tune.run` does: its own SIGINT handler, which puts back the one it found."""
    found = signal.getsignal(signal.SIGINT)
    fired = []

    def handler(signum, frame):
        fired.append(signum)
        signal.signal(signal.SIGINT, found)

    signal.signal(signal.SIGINT, handler)
    return fired


def wait_for(condition) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_fit_that_tune_stopped_on_ctrl_c_is_interrupted():
    before = signal.getsignal(signal.SIGINT)
    with InterruptWatch() as watch:
        fired = tune_like_handler()
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: fired)
    assert watch.interrupted
    assert signal.getsignal(signal.SIGINT) is before


def test_a_fit_without_a_signal_is_not_interrupted():
    with InterruptWatch() as watch:
        tune_like_handler()
    assert not watch.interrupted


def test_a_second_ctrl_c_stops_at_once():
    with pytest.raises(KeyboardInterrupt), InterruptWatch() as watch:
        tune_like_handler()
        os.kill(os.getpid(), signal.SIGINT)  # Tune's: stop gracefully
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # ours: stop now
        time.sleep(5)
    assert watch.interrupted


def test_sigterm_stops_the_study_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    with InterruptWatch() as watch:
        fired = tune_like_handler()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: fired)
    assert watch.interrupted and fired == [signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before
