"""Run a study module (argv: module, then its options) in this process, and fill the file
system at `TUNEGAP_TEST_FILL_MOUNT` the moment the study starts writing its final tables
(after Tune's fit, before `finish_study`), as another program writing there would: every
trial has finished, and the tables, summary and figures meet a full disk."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from ballast import fill  # beside this script, first on sys.path

import tunegap.runner.run as run

MOUNT = Path(os.environ["TUNEGAP_TEST_FILL_MOUNT"])
finish_study = run.finish_study


def fill_then_finish(*args, **kwargs):
    fill(MOUNT)
    return finish_study(*args, **kwargs)


run.finish_study = fill_then_finish
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
