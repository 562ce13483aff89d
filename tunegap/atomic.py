"""One way to write a file that readers never see half-written.

Several trials may build the same cache at once, and a driver may be killed mid-write: the
content goes to a hidden temporary file in the same folder, is flushed to disk, then moved
over the target with `os.replace` (atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file, then move it over `path` in one step.

    On any failure the temporary file is removed and an existing `path` is left as it was.
    The temporary name keeps `path`'s suffix, for writers that add one when it is missing
    (`numpy.savez`).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> write_atomically(out, lambda tmp: tmp.write_text("done")).read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            # Without this a power cut after the rename can leave an empty file behind it.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """`path` holding exactly `text`, written with `write_atomically`."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))
