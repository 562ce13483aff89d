"""What every benchmark prints beside its table: which code made the numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str:
    """Short commit of this checkout, "+dirty" with uncommitted changes, or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")
