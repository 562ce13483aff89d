"""Run a study module (argv: module, then its options) in this process, and SIGKILL this
process group at the moment Tune writes its experiment state, once `TUNEGAP_TEST_KILL_AFTER`
trials have finished: the run folder's `experiment_state-*.json` is left holding the first
half of what Tune was writing, as a kill in the middle of copying it there leaves it. The ids
of the trials Tune had finished by then go to `TUNEGAP_TEST_FINISHED_FILE`, one a line: a
trial can have reported its last epoch without being finished (its final checkpoint not yet
saved), and only the finished ones must never train again."""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from ray.tune.execution.tune_controller import TuneController

NEED = int(os.environ["TUNEGAP_TEST_KILL_AFTER"])
save_to_dir = TuneController.save_to_dir


def save_then_die(self: TuneController) -> None:
    save_to_dir(self)
    if sum(t.status == "TERMINATED" for t in self.get_trials()) < NEED:
        return
    finished = [t.trial_id for t in self.get_trials() if t.status == "TERMINATED"]
    Path(os.environ["TUNEGAP_TEST_FINISHED_FILE"]).write_text("\n".join(finished))
    name = self.experiment_state_file_name
    written = Path(self._storage.experiment_driver_staging_path, name).read_bytes()
    Path(self._storage.experiment_fs_path, name).write_bytes(written[: len(written) // 2])
    os.killpg(os.getpgrp(), signal.SIGKILL)


TuneController.save_to_dir = save_then_die
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
