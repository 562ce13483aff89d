"""Shared fixtures: one local Ray for the whole test session, MNIST-1D cached per session."""

from __future__ import annotations

import os
import subprocess
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


@pytest.fixture
def small_mount(tmp_path):
    """A tmpfs of our own that can be remounted read-only (root only: tests run as root
    here and in CI; elsewhere the fault cannot be made and the test says so)."""
    where = tmp_path / "mnt"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make read-only here: {made.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)
