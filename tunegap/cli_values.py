"""The value parsers of the command lines: each turns one option's text into its value or
raises argparse's error with one line naming the option and what is allowed."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from tunegap.regime import MATCHED
from tunegap.study_checks import AUTO


def int_list(flag: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r} is not a comma-separated list of integers"
            ) from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: use positive integers, e.g. 32,512")
        return values

    return parse


def ghost_list(text: str) -> tuple[int | None, ...]:
    """Ghost sizes as `--ghost-sizes` takes them (`TrialConfig`'s own parsing, per item)."""
    from tunegap.config import parse_ghost_batch_size

    try:
        return tuple(parse_ghost_batch_size(v.strip()) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ghost-sizes {text!r}: use positive integers or 'none', e.g. none,32,128"
        ) from None


def float_list(flag: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a list of numbers") from None
        if not values or any(not math.isfinite(v) or v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: use finite numbers >= 0")
        return values

    return parse


def multiplier_list(text: str) -> tuple[float | str, ...]:
    values: list[float | str] = []
    for v in text.split(","):
        v = v.strip().lower()
        if v == MATCHED:
            values.append(MATCHED)
            continue
        try:
            x = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--multipliers {text!r}: use numbers > 0 or 'matched', e.g. 1,4,matched"
            ) from None
        if not math.isfinite(x) or x <= 0:
            raise argparse.ArgumentTypeError(f"--multipliers {text!r}: use finite numbers > 0")
        values.append(x)
    return tuple(values)


def positive_int(flag: str) -> Callable[[str], int]:
    as_int = integer(flag)

    def parse(text: str) -> int:
        value = as_int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {value} is not allowed: use an integer >= 1")
        return value

    return parse


def non_negative(flag: str) -> Callable[[str], float]:
    """A finite number >= 0 (`number_in` from 0)."""
    return number_in(flag, low=0.0)


def number_in(flag: str, *, low: float, high: float | None = None,
              low_open: bool = False) -> Callable[[str], float]:
    """A finite number from `low` (excluded with `low_open`) up to `high` (None: no bound);
    the message says the range (`outside_range`)."""
    as_number = number(flag)

    def parse(text: str) -> float:
        value = as_number(text)
        allowed = outside_range(value, low=low, high=high, low_open=low_open)
        if allowed:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not allowed: use {allowed}")
        return value

    return parse


def outside_range(value: float, *, low: float, high: float | None = None,
                  low_open: bool = False) -> str | None:
    """None where `value` is finite, from `low` (excluded with `low_open`) up to `high`;
    else what is allowed, in words.

    >>> outside_range(2.0, low=0, high=1)
    'a number >= 0 and <= 1'
    """
    above = value > low if low_open else value >= low
    if math.isfinite(value) and above and (high is None or value <= high):
        return None
    floor = f"> {low:g}" if low_open else f">= {low:g}"
    return f"a number {floor}" + ("" if high is None else f" and <= {high:g}")


def integer(flag: str) -> Callable[[str], int]:
    """Any integer; the knob's own check (e.g. `TrialConfig`) says what is allowed."""

    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not an integer") from None

    return parse


def number(flag: str) -> Callable[[str], float]:
    """Any number; the knob's own check (e.g. `TrialConfig`) says what is allowed."""

    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not a number") from None

    return parse


def seed_count(text: str) -> int | str:
    """`--seeds`: a number of seeds per cell, or "auto" (seeds until each cell is decided)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r} is not allowed: use an integer >= 1 or auto"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--seeds {value} is not allowed: use an integer >= 1 or auto")
    return value
