"""Run a study module (argv: module, then its options) in this process, and fill the file
system at `TUNEGAP_TEST_FILL_MOUNT` the moment the study writes its first state (after its
checks, Ray and the MLflow parent run, before any trial), as another program writing there
would: the study has started but recorded nothing yet."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from ballast import fill  # beside this script, first on sys.path

import tunegap.runner.run as run

MOUNT = Path(os.environ["TUNEGAP_TEST_FILL_MOUNT"])
write_run_state = run.write_run_state


def fill_then_write(*args, **kwargs):
    fill(MOUNT)
    return write_run_state(*args, **kwargs)


run.write_run_state = fill_then_write
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
