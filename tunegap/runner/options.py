"""Where and how a study runs: `RunOptions` (storage, tracking store, Ray address, devices)
and the environment's defaults for the command line; what a study searches is
`tunegap.study.Study`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tunegap.config import Device
from tunegap.cpu_memory import cpu_malloc_mode
from tunegap.errors import StudyError
from tunegap.study_checks import check_count, check_optional_count

DEFAULT_STORAGE = "./tunegap_results"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The command line's defaults where --tracking-uri / --storage-path are not given (see
# `default_tracking_uri`): MLflow's own variable, and ours for the results folder. On the
# cluster of cluster.yaml the head exports both, so studies need no extra flags there.
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
STORAGE_ENV = "TUNEGAP_STORAGE"


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where and how a study runs: options common to every study's CLI.

    >>> RunOptions(storage_path="/tmp/results", tracking_uri="sqlite:////tmp/mlflow.db",
    ...            device="cpu", max_concurrent=2).checkpoint_every
    5
    >>> RunOptions(address="nowhere")
    Traceback (most recent call last):
    ...
    tunegap.errors.StudyError: --address 'nowhere' is not allowed: use auto, local, host:port or ray://host:port, e.g. 10.0.0.5:6379
    """

    address: str | None = None
    storage_path: str = DEFAULT_STORAGE
    tracking_uri: str = DEFAULT_TRACKING_URI
    resume: bool = False
    max_concurrent: int | None = None
    gpus_per_trial: float | None = None
    device: Device = "auto"
    data_dir: str | None = None
    checkpoint_every: int = 5
    max_failures: int = 3
    quiet: bool = False

    def __post_init__(self) -> None:
        check_optional_count("--max-concurrent", self.max_concurrent)
        check_count("--checkpoint-every", self.checkpoint_every)
        if self.gpus_per_trial is not None and not (
            math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0
        ):
            raise StudyError(
                f"--gpus-per-trial {self.gpus_per_trial!r} is not allowed: use a number >= 0"
            )
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1 and (
            not float(self.gpus_per_trial).is_integer()
        ):
            # Ray shares a GPU in fractions below 1; above 1 it only hands out whole GPUs.
            raise StudyError(
                f"--gpus-per-trial {self.gpus_per_trial!r} is not allowed: use a fraction "
                "up to 1 (e.g. 0.25 for four trials per GPU) or a whole number of GPUs"
            )
        if isinstance(self.max_failures, bool) or self.max_failures < 0:
            raise StudyError(f"--max-failures {self.max_failures!r} is not allowed: use >= 0")
        _check_address(self.address)
        try:
            cpu_malloc_mode()  # read by every CPU trial: refuse a bad value before any starts
        except ValueError as err:
            raise StudyError(str(err)) from None
        if "://" in str(self.storage_path):
            # Every result is written with plain file operations (Path, os.replace), so a URL
            # would become a local folder named "s3:"; a shared mount works on a cluster.
            raise StudyError(
                f"--storage-path {self.storage_path!r} is a URL, which is not supported: use a "
                "folder every node can reach (on the cluster of cluster.yaml: the S3 bucket "
                "mounted at /mnt/tunegap, see CLUSTER.md)"
            )
        for flag, value, example in (("--storage-path", self.storage_path, "./tunegap_results"),
                                     ("--tracking-uri", self.tracking_uri, "sqlite:///mlflow.db"),
                                     ("--data-dir", self.data_dir, "~/data")):
            if value is not None and not str(value).strip():
                raise StudyError(f"{flag} {value!r} is empty: name one, e.g. {example}")
        if self.data_dir is not None and Path(self.data_dir).expanduser().is_file():
            raise StudyError(f"--data-dir {self.data_dir} is a file: name the folder that "
                             "holds (or will cache) the data set")


def _check_address(address: str | None) -> None:
    """`--address`: None or "local" (a new local Ray), "auto", host:port or ray://host:port."""
    if address in (None, "local", "auto"):
        return
    text = str(address).removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 address, e.g. [::1]:6379
    elif ":" in host:
        host = ""
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StudyError(
            f"--address {address!r} is not allowed: use auto, local, host:port or "
            "ray://host:port, e.g. 10.0.0.5:6379"
        )


def default_tracking_uri(environ: Mapping[str, str] | None = None) -> str:
    """The tracking URI of a study run without --tracking-uri.

    `$MLFLOW_TRACKING_URI` where it is set and not empty (MLflow's standard variable; the head
    of cluster.yaml exports http://127.0.0.1:5000, its MLflow server), else
    sqlite:///mlflow.db in the current folder. `RunOptions` itself has no such rule.
    """
    env = os.environ if environ is None else environ
    return env.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def default_storage_path(environ: Mapping[str, str] | None = None) -> str:
    """The results folder of a study run without --storage-path.

    `$TUNEGAP_STORAGE` where it is set and not empty (cluster.yaml exports a folder shared by
    every node), else ./tunegap_results.
    """
    env = os.environ if environ is None else environ
    return env.get(STORAGE_ENV) or DEFAULT_STORAGE
