"""Fill a file system at the moment a trial saves a checkpoint, in the Ray worker that saves it.

Put this folder first on PYTHONPATH: Python imports `sitecustomize` in every process it
starts, the study's driver and the Ray workers it spawns alike. Where
`TUNEGAP_TEST_FILL_MOUNT` names a mount, `GapTrainable.save_checkpoint` of epoch
`TUNEGAP_TEST_FILL_AT_EPOCH` or later fills that file system (once) before saving, as another
program writing there would: the checkpoint Tune then copies to the run folder meets a full
disk."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

MOUNT = os.environ.get("TUNEGAP_TEST_FILL_MOUNT")
AT_EPOCH = int(os.environ.get("TUNEGAP_TEST_FILL_AT_EPOCH", "1"))
TARGET = "tunegap.runner.trainable"


def fill(mount: Path) -> None:
    """`tests/ballast.py`'s fill, loaded by path: the workers' sys.path has no tests/."""
    spec = importlib.util.spec_from_file_location(
        "ballast", Path(__file__).resolve().parents[1] / "ballast.py")
    ballast = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ballast)
    ballast.fill(mount)


def patch(module) -> None:
    save = module.GapTrainable.save_checkpoint

    def fill_then_save(self, checkpoint_dir: str) -> None:
        if self.engine.epoch >= AT_EPOCH and not (Path(MOUNT) / "ballast").exists():
            fill(Path(MOUNT))
        return save(self, checkpoint_dir)

    module.GapTrainable.save_checkpoint = fill_then_save


class PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


if MOUNT:
    sys.meta_path.insert(0, PatchOnImport())
