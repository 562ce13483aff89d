"""What every benchmark prints beside its table: which code made the numbers."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import torch


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


def print_header(device: torch.device) -> None:
    """The lines every benchmark table starts with: when, which code, which machine."""
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"commit:  {git_commit()}")
    print(f"torch:   {torch.__version__}")
    print(f"device:  {device} ({name})")
    print(f"threads: {torch.get_num_threads()}")
