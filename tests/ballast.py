"""A file system filled from outside, as another program writing there would fill it."""

from __future__ import annotations

import shutil
from pathlib import Path


def fill(mount: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system at `mount` with a file `ballast` until `leave_bytes` are free:
    the study's next writes find it full. Returns the ballast file (delete it to free the
    space)."""
    ballast = mount / "ballast"
    with open(ballast, "wb") as out:
        chunk = b"\0" * (1 << 20)
        while shutil.disk_usage(mount).free > leave_bytes + len(chunk):
            out.write(chunk)
            out.flush()
        try:
            while shutil.disk_usage(mount).free > leave_bytes:
                out.write(b"\0" * 4096)
                out.flush()
        except OSError:
            pass  # full
    return ballast
