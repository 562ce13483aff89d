"""`TrialConfig`: the knobs of one trial, validated, and its flat-dict form for Tune and MLflow."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tunegap.regime import (
    Regime,
    check_exponent,
    check_positive_int,
    parse_regime_multiplier,
)
from tunegap.workloads import Workload, get_workload

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
NO_GHOST_WORDS = ("none", "bn", "off")


def parse_ghost_batch_size(value: object) -> int | None:
    """A ghost batch size: a positive integer, or None / "none" for plain BatchNorm."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in NO_GHOST_WORDS:
            return None
        try:
            value = int(value)
        except ValueError:
            raise ValueError(
                f"ghost_batch_size {value!r} is not allowed: use a positive integer or 'none'"
            ) from None
    value = _as_int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"ghost_batch_size {value!r} is not allowed: use a positive integer or 'none'"
        )
    return value


def _as_int(value: object) -> object:
    # Tune grids may hand over numpy integers; treat integral numbers as ints, nothing else.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _as_float(value: object) -> object:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class TrialConfig:
    """One point of a study: a workload plus the batch-size knobs and a seed.

    `epochs` and `base_lr` override the workload's base regime (decay epochs move in
    proportion to `epochs`), for quick looks and for searches over the base learning rate.

    >>> cfg = TrialConfig(workload="mnist1d-cnn", batch_size=2048, ghost_batch_size=32,
    ...                   lr_exponent=0.5, regime_multiplier="matched")
    >>> cfg.regime().resolve(cfg.batch_size).epochs
    1280
    >>> TrialConfig(workload="mnist1d-cnn", batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size 0 is not allowed: use a positive integer
    """

    workload: str
    batch_size: int
    ghost_batch_size: int | None = None
    lr_exponent: float = 0.0
    regime_multiplier: float | str = 1.0
    seed: int = 0
    epochs: int | None = None
    base_lr: float | None = None
    device: str = "auto"
    data_dir: str | None = None
    # Instruments (they change what is measured, never the training itself):
    # gradient noise scale every k-th step (0 = off); top Hessian eigenvalue every k epochs
    # and at the end (0 = off).
    noise_scale_every: int = 0
    sharpness_every: int = 0
    # Execution (same maths, other speed): "auto" = bf16 autocast and channels_last on CUDA,
    # fp32 on CPU; "fp32" / "bf16" force it. `compile` wraps the model in torch.compile.
    precision: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        get_workload(self.workload)
        object.__setattr__(
            self, "batch_size", check_positive_int("batch_size", _as_int(self.batch_size))
        )
        object.__setattr__(self, "ghost_batch_size", parse_ghost_batch_size(self.ghost_batch_size))
        object.__setattr__(self, "lr_exponent", check_exponent(_as_float(self.lr_exponent)))
        object.__setattr__(
            self, "regime_multiplier", parse_regime_multiplier(_as_float(self.regime_multiplier))
        )
        seed = _as_int(self.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed {self.seed!r} is not allowed: use an integer >= 0")
        object.__setattr__(self, "seed", seed)
        if self.epochs is not None:
            object.__setattr__(self, "epochs", check_positive_int("epochs", _as_int(self.epochs)))
        if self.base_lr is not None:
            lr = _as_float(self.base_lr)
            if not isinstance(lr, float) or not math.isfinite(lr) or lr <= 0:
                raise ValueError(f"base_lr {self.base_lr!r} is not allowed: use a number > 0")
            object.__setattr__(self, "base_lr", lr)
        for name in ("noise_scale_every", "sharpness_every"):
            value = _as_int(getattr(self, name))
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"{name} {getattr(self, name)!r} is not allowed: use an integer >= 0"
                )
            object.__setattr__(self, name, value)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision {self.precision!r} is not allowed: use one of {', '.join(PRECISIONS)}"
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile {self.compile!r} is not allowed: use true or false")
        if self.device not in DEVICES:
            raise ValueError(
                f"device {self.device!r} is not allowed: use one of {', '.join(DEVICES)}"
            )

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> TrialConfig:
        """Build from a flat dict (a Tune config); keys that are not knobs are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(
                f"unknown trial config key(s) {', '.join(unknown)}: use {', '.join(sorted(known))}"
            )
        if "workload" not in flat or "batch_size" not in flat:
            raise ValueError("a trial config needs at least 'workload' and 'batch_size'")
        return cls(**flat)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> TrialConfig:
        return replace(self, **changes)

    def get_workload(self) -> Workload:
        return get_workload(self.workload)

    def regime(self) -> Regime:
        """The workload's base regime with this trial's exponent, multiplier and overrides."""
        base = self.get_workload().regime
        changes: dict[str, Any] = {
            "lr_exponent": self.lr_exponent,
            "regime_multiplier": self.regime_multiplier,
        }
        if self.base_lr is not None:
            changes["base_lr"] = self.base_lr
        if self.epochs is not None:
            base = base.with_epochs(self.epochs)
        return replace(base, **changes)
