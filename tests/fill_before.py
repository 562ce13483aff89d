"""Run a study module (argv: module, then its options) in this process, and fill the file
system at `TUNEGAP_TEST_FILL_MOUNT` the moment the study calls `tunegap.runner.run`'s
function named in `TUNEGAP_TEST_FILL_BEFORE`, as another program writing there would:

- `write_run_state`: its first state write (after its checks, Ray and the MLflow parent
  run, before any trial); the study has started but recorded nothing yet;
- `finish_study`: its final tables (after Tune's fit); every trial has finished, and the
  tables, summary and figures meet a full disk."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from ballast import fill  # beside this script, first on sys.path

import tunegap.runner.run as run

MOUNT = Path(os.environ["TUNEGAP_TEST_FILL_MOUNT"])
NAME = os.environ["TUNEGAP_TEST_FILL_BEFORE"]
original = getattr(run, NAME)


def fill_then_call(*args, **kwargs):
    fill(MOUNT)
    return original(*args, **kwargs)


setattr(run, NAME, fill_then_call)
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
