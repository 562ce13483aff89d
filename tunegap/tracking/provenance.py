"""Which code and packages made a run: the tunegap checkout's git commit, the versions of
the packages a result depends on, and the source tags MLflow's UI shows."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

# The packages whose versions a result depends on (`version.<name>` params).
PACKAGES = ("torch", "ray", "mlflow", "optuna", "tunegap")
TAG_GIT_COMMIT = "mlflow.source.git.commit"


def code_version() -> str:
    """The git commit of the tunegap checkout (``+dirty`` with uncommitted changes to
    tracked files), or the package version where it is not a git checkout."""
    here = str(Path(__file__).resolve().parent)
    try:
        commit = _git(here, "rev-parse", "HEAD")
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return f"tunegap-{_package_version('tunegap')}"
    return commit + ("+dirty" if dirty else "")


def _git(folder: str, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", folder, *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def context_tags(code: str | None = None) -> dict[str, str]:
    """The source tags `mlflow.start_run` would set (its default run context: source name
    and type, user) and the git commit of `code` (a `code_version`) where it is one.

    `create_run` sets none of them, and MLflow's git context looks at the main script, which
    for the `tunegap` command is not the checkout: the commit comes from tunegap's own
    folder instead."""
    from mlflow.tracking.context.default_context import DefaultRunContext

    try:
        tags = dict(DefaultRunContext().tags())
    except Exception:  # a context MLflow cannot read must not stop the study
        tags = {MLFLOW_SOURCE_NAME: sys.argv[0] if sys.argv else "", MLFLOW_SOURCE_TYPE: "LOCAL"}
    tags.setdefault(MLFLOW_USER, "unknown")
    commit = re.match(r"[0-9a-f]{40}", code or "")
    if commit:
        # The UI shows this system tag as the run's source version.
        tags[TAG_GIT_COMMIT] = commit.group(0)
    return {k: str(v) for k, v in tags.items()}


def package_versions() -> dict[str, str]:
    """``version.<package>`` params for the packages a result depends on."""
    return {f"version.{name}": _package_version(name) for name in PACKAGES}
