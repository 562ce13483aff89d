"""Text cut to fit: one-line messages for warnings and errors, long texts for MLflow tags."""

from __future__ import annotations

from typing import Any


def one_line(value: Any, limit: int = 300) -> str:
    """`value` as a single line of at most `limit` characters (runs of whitespace -> one space)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(value: Any) -> str:
    """The first line of `value`'s text, stripped: what a one-line error keeps of a longer
    message (its own first line names the problem); "" for an empty one.

    >>> first_line("unknown workload 'x'\\n  details"), first_line("")
    ("unknown workload 'x'", '')
    """
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def clip(text: str, limit: int) -> str:
    """Keep the first line (where Ray names the trial) and the end (where the exception is)."""
    if len(text) <= limit:
        return text
    head = text.splitlines()[0][:200]
    return f"{head}\n…\n{text[-(limit - len(head) - 3) :]}"
