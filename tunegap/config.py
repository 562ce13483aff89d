"""`TrialConfig`: the knobs of one trial, validated, and its flat-dict form for Tune and MLflow."""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

from tunegap.gbn import check_ghost_batch_size
from tunegap.models.init import BN_WEIGHT_INITS, BnWeightInit
from tunegap.optim import check_optimizer, optimizer_spec
from tunegap.regime import (
    SCHEDULES,
    Regime,
    Schedule,
    check_exponent,
    check_positive_int,
    parse_regime_multiplier,
)
from tunegap.workloads import Workload, get_workload

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
NO_GHOST_WORDS = ("none", "bn", "off")
# "authors": bigBatch's own loop (`tunegap.engine`) and input pipelines
# (`tunegap.data.protocols`); "clean" ours.
Protocol = Literal["clean", "authors"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
# The models whose files in bigBatch set BatchNorm weights to 1 (ResNet, WRN).
AUTHORS_UNIT_BN_MODELS = ("resnet44", "cifar_resnet", "wrn16_4")
# The authors' main_normal.py scales lr and epochs from this batch size.
AUTHORS_REFERENCE_BATCH = 256
# Bounds only a typo exceeds.
MAX_UPDATES = 100_000_000
# At most half the training set held out for choosing the best epoch.
MAX_VALIDATION_FRACTION = 0.5


def ghost_is_whole_batch(ghost: int | None, batch_size: int) -> bool:
    """Whether a ghost size holds the whole batch (>= it): plain BatchNorm by another name.
    A study runs such a cell once, as BatchNorm; `tunegap train` refuses it.

    >>> ghost_is_whole_batch(32, 32), ghost_is_whole_batch(16, 32), ghost_is_whole_batch(None, 8)
    (True, False, False)
    """
    return ghost is not None and ghost >= batch_size


def parse_ghost_batch_size(value: object) -> int | None:
    """A ghost batch size: a positive integer (or its digits), or None / "none" for plain
    BatchNorm (`tunegap.gbn.check_ghost_batch_size` is the rule)."""
    if isinstance(value, str):
        if value.strip().lower() in NO_GHOST_WORDS:
            return None
        with contextlib.suppress(ValueError):  # not a number: the rule below names it
            value = int(value)
    return check_ghost_batch_size(value)


def _as_int(value: object) -> object:
    # Tune grids may hand over numpy integers; treat integral numbers as ints, nothing else.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not allowed: use one of {', '.join(allowed)}")


def _as_float(value: object) -> object:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True, kw_only=True)
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
    device: Device = "auto"
    data_dir: str | None = None
    # Instruments (they change what is measured, never the training itself):
    # gradient noise scale every k-th step (0 = off); top Hessian eigenvalue every k epochs
    # and at the end (0 = off).
    noise_scale_every: int = 0
    sharpness_every: int = 0
    # Execution (same maths, other speed): "auto" = bf16 autocast and channels_last on CUDA,
    # fp32 on CPU; "fp32" / "bf16" force it. `compile` wraps the model in torch.compile.
    precision: Precision = "auto"
    compile: bool = False
    # Training knobs beyond the paper's four (None: the workload's own setting). `momentum`
    # is Adam's beta1 for adam/adamw; `weight_decay` a number holds all run long.
    optimizer: str = "sgd"
    momentum: float | None = None
    weight_decay: float | None = None
    no_decay_bn_bias: bool = False
    warmup_epochs: float | None = None
    warmup_start_factor: float = 0.0
    scale_warmup: bool = False
    schedule: Schedule = "step"
    label_smoothing: float = 0.0
    # A subset of the training set (the same samples for every trial), and a budget of
    # weight updates in place of epochs.
    train_size: int | None = None
    # A share of the training set held out (the same samples for every trial) to pick the
    # best epoch without looking at the test set; 0: train on all of it.
    validation_fraction: float = 0.0
    max_updates: int | None = None
    # None: "one" under the clean protocol; under the authors', U(0,1) except in ResNet/WRN.
    bn_weight_init: BnWeightInit | None = None
    zero_init_residual: bool = False
    protocol: Protocol = "clean"

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
        self._check_training_knobs()

    def _check_training_knobs(self) -> None:
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("protocol", self.protocol, PROTOCOLS)
        if self.bn_weight_init is not None:
            _check_choice("bn_weight_init", self.bn_weight_init, BN_WEIGHT_INITS)
        for name in ("no_decay_bn_bias", "scale_warmup", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} {getattr(self, name)!r} is not allowed: use true or false")
        self._set_number("momentum", low=0.0, high=1.0, high_open=True, optional=True)
        self._set_number("weight_decay", low=0.0, optional=True)
        self._set_number("warmup_epochs", low=0.0, optional=True)
        self._set_number("warmup_start_factor", low=0.0, high=1.0)
        self._set_number("label_smoothing", low=0.0, high=1.0, high_open=True)
        self._set_number("validation_fraction", low=0.0, high=MAX_VALIDATION_FRACTION)
        for name, bound in (("train_size", None), ("max_updates", MAX_UPDATES)):
            value = _as_int(getattr(self, name))
            if value is None:
                continue
            value = check_positive_int(name, value)
            if bound is not None and value > bound:
                raise ValueError(f"{name} {value} is not allowed: use at most {bound}")
            object.__setattr__(self, name, value)
        if self.validation_fraction and self.get_workload().streaming:
            raise ValueError(f"validation_fraction is not allowed for workload {self.workload!r}: "
                             "it streams its data from disk; judge the final epoch instead")
        if self.train_size is not None and self.get_workload().streaming:
            raise ValueError(f"train_size is not allowed for workload {self.workload!r}: it "
                             "streams its data from disk; give a folder of a subset as data_dir")
        if self.zero_init_residual:
            from tunegap.models.init import RESIDUAL_MODELS

            model = self.get_workload().model
            if model not in RESIDUAL_MODELS:
                raise ValueError(f"zero_init_residual is not allowed for model {model!r}: it "
                                 f"needs residual blocks ({', '.join(RESIDUAL_MODELS)})")
        check_optimizer(self.optimizer, self.momentum)
        if self.max_updates is not None and self.regime_multiplier not in (1.0, "matched"):
            raise ValueError(
                f"regime_multiplier {self.regime_multiplier} is not allowed with max_updates: "
                "a budget of updates sets the length, so use 1"
            )

    def _set_number(self, name: str, *, low: float, high: float | None = None,
                    high_open: bool = False, optional: bool = False) -> None:
        value = _as_float(getattr(self, name))
        if value is None and optional:
            return
        upper = high is None or (value < high if high_open else value <= high)
        if not isinstance(value, float) or not math.isfinite(value) or value < low or not upper:
            allowed = f">= {low:g}" if high is None else (
                f"{low:g} <= value {'<' if high_open else '<='} {high:g}")
            raise ValueError(f"{name} {getattr(self, name)!r} is not allowed: use a number {allowed}")
        object.__setattr__(self, name, value)

    @property
    def authors(self) -> bool:
        """Whether the trial trains as the authors' code does (`protocol="authors"`)."""
        return self.protocol == "authors"

    def resolved_momentum(self) -> float:
        """The momentum (Adam's beta1) the optimizer is built with."""
        if self.momentum is not None:
            return self.momentum
        default = optimizer_spec(self.optimizer).default_momentum
        return self.get_workload().regime.momentum if default is None else default

    def resolved_bn_weight_init(self) -> str:
        """How BatchNorm weights start: the knob, else the protocol's default."""
        if self.bn_weight_init is not None:
            return self.bn_weight_init
        # 2017 PyTorch drew BN weights from U(0,1); the authors set 1 in ResNet/WRN only.
        keeps_uniform = self.authors and self.get_workload().model not in AUTHORS_UNIT_BN_MODELS
        return "uniform" if keeps_uniform else "one"

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
            "schedule": self.schedule,
            "warmup_start_factor": self.warmup_start_factor,
            "scale_warmup": self.scale_warmup,
            "max_updates": self.max_updates,
            "momentum": self.resolved_momentum(),
        }
        if self.base_lr is not None:
            changes["base_lr"] = self.base_lr
        if self.weight_decay is not None:
            changes.update(weight_decay=self.weight_decay, weight_decays=())
        if self.warmup_epochs is not None:
            changes["warmup_epochs"] = self.warmup_epochs
        if self.authors:
            # main_gbn.py scales from its --mini-batch-size (the ghost size), main_normal.py
            # from 256.
            changes["reference_batch_size"] = self.ghost_batch_size or AUTHORS_REFERENCE_BATCH
        if self.epochs is not None:
            base = base.with_epochs(self.epochs)
        return replace(base, **changes)

    def resolved_knobs(self) -> dict[str, Any]:
        """The training knobs as this trial uses them (defaults filled in), for MLflow
        params and the trials table."""
        regime = self.regime()
        return {
            "optimizer": self.optimizer,
            "momentum": regime.momentum,
            "weight_decay": regime.weight_decay if self.weight_decay is None else self.weight_decay,
            "no_decay_bn_bias": (self.no_decay_bn_bias
                                 or optimizer_spec(self.optimizer).exclude_norm_and_bias),
            "warmup_start_factor": self.warmup_start_factor,
            "schedule": self.schedule,
            "label_smoothing": self.label_smoothing,
            "validation_fraction": self.validation_fraction,
            "bn_weight_init": self.resolved_bn_weight_init(),
            "zero_init_residual": self.zero_init_residual,
            "protocol": self.protocol,
        }
