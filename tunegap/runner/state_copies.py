"""A last good copy of Tune's experiment state, put back when `--resume` finds it cut short.

Tune saves its state (`experiment_state-*.json`, the searcher's and the callbacks' state) by
writing files in place and copying them to the run folder. A driver killed during that
write, or a disk that fills, leaves a file cut short; Tune then fails to restore, starts
the experiment over and dies. `StateCopies`, a Tune callback, copies every state file that
reads whole into `<run>/.state-good/` as the study goes (in the driver's loop, after Tune's
saves). `repair_state`, called by `--resume` before Tune restores, puts the good copy back
in place of any state file that does not read, and says in one line what it recovered.

A good copy can be one save behind: trials that finished or moved on after it resume from
their newest checkpoint (`GapTrainable.restore` prefers it), and one that had finished
reports its last epoch again without training (`GapTrainable.step`), so none is lost or
trained again.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

from ray import tune

# The files Tune's `save_to_dir` writes, per experiment session.
STATE_PATTERNS: tuple[str, ...] = ("experiment_state-*.json", "search_gen_state-*.json",
                                   "basic-variant-state-*.json", "searcher-state-*.pkl",
                                   "callback-states-*.pkl")
GOOD_DIR = ".state-good"


class StateUnrecoverable(Exception):
    """A state file is cut short and no good copy of it exists."""


def reads_whole(path: Path) -> bool:
    """Whether the state file at `path` parses completely: as JSON, or as a pickle (Tune
    pickles its searchers' state into files named `*.json` too)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    for parse in (json.loads, pickle.loads):
        try:
            parse(data)
        except Exception:  # cut short, garbled, or the other format
            continue
        return bool(data)
    return False


def state_files(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in STATE_PATTERNS for p in run_dir.glob(pattern))


def keep_good_copies(run_dir: Path, seen: dict[str, tuple[int, int]] | None = None) -> int:
    """Copy each state file of `run_dir` that reads whole to `<run_dir>/.state-good/`
    (written to a temporary name, then renamed, so a copy is whole or absent); `seen`
    (name -> (mtime_ns, size)) skips files unchanged since the last call. Returns how many
    were copied. A copy that fails (a full disk) keeps the previous good one."""
    good = run_dir / GOOD_DIR
    copied = 0
    for path in state_files(run_dir):
        try:
            stat = path.stat()
        except OSError:
            continue
        key = (stat.st_mtime_ns, stat.st_size)
        if seen is not None and seen.get(path.name) == key:
            continue
        if not reads_whole(path):
            continue  # cut short, or still being copied: the last good copy stays
        tmp = good / f".{path.name}.tmp"
        try:
            good.mkdir(exist_ok=True)
            shutil.copyfile(path, tmp)
            os.replace(tmp, good / path.name)
        except OSError:
            # A full or read-only disk: the last good copy stays, and the study's own
            # storage check says what went wrong.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            continue
        if seen is not None:
            seen[path.name] = key
        copied += 1
    return copied


def repair_state(run_dir: Path) -> list[str]:
    """Put the good copy back for every state file of `run_dir` that does not read whole
    (or is missing beside a good copy); returns one line per file put back (or left as it
    is). Raises `StateUnrecoverable` when the experiment state is cut short and there is no
    good copy of it."""
    good = run_dir / GOOD_DIR
    names = {p.name for p in state_files(run_dir)}
    names |= {p.name for p in state_files(good)} if good.is_dir() else set()
    lines = []
    for name in sorted(names):
        path, copy = run_dir / name, good / name
        if path.is_file() and reads_whole(path):
            continue
        if not (copy.is_file() and reads_whole(copy)):
            if not name.startswith("experiment_state-"):
                # Tune may still read it (a format this check does not know): say so, go on.
                lines.append(f"--resume: warning: {name} does not read here and has no good "
                             "copy; Tune is left to read it")
                continue
            raise StateUnrecoverable(
                f"--resume: Tune's state file {path} is cut short (a killed driver or a full "
                "disk) and this run kept no good copy of it: start the study again without "
                "--resume")
        what = "was cut short" if path.exists() else "was missing"
        shutil.copyfile(copy, path)
        saved = time.strftime("%H:%M:%S", time.localtime(copy.stat().st_mtime))
        lines.append(f"--resume: {name} {what} (a killed driver or a full disk): put back its "
                     f"last good copy, saved at {saved}{finished_note(copy)}")
    return lines


def finished_note(experiment_state: Path) -> str:
    """", with N finished trials" for an experiment state file; "" for the others."""
    if not experiment_state.name.startswith("experiment_state-"):
        return ""
    try:
        trials = json.loads(experiment_state.read_text())["trial_data"]
        done = sum(_status(entry) == "TERMINATED" for entry in trials)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    return (f", with {done} of {len(trials)} trials finished in it; the others resume from "
            "their newest checkpoint")


def _status(entry: Any) -> str | None:
    """A trial's status in Tune's saved state: each entry is [trial JSON, run metadata]."""
    first = entry[0] if isinstance(entry, list) else entry
    return (json.loads(first) if isinstance(first, str) else first).get("status")


class StateCopies(tune.Callback):
    """Keeps `<run>/.state-good/` up to date while the study runs (see the module)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = str(run_dir)
        self._seen: dict[str, tuple[int, int]] = {}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        keep_good_copies(Path(self.run_dir), self._seen)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        keep_good_copies(Path(self.run_dir), self._seen)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the Tuner: a restored driver checks every file afresh.
        return {"run_dir": self.run_dir, "_seen": {}}
