"""Shared fixtures: one local Ray for the whole test session, MNIST-1D cached per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session data cache, so tests never read or write the user's ~/.cache."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Real local Ray on 2 CPUs, started once and shut down at the end."""
    import ray

    started = not ray.is_initialized()
    if started:
        # Workers must import the repo's tunegap, not a stale copy elsewhere.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        from tunegap.runner.resources import start_local_ray

        start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
