"""The training regime and the paper's two rules that change it with the batch size.

- Learning-rate scaling (+LR): lr = base_lr * (B / B0) ** lr_exponent. Exponent 0.5 is the
  paper's square-root rule (it keeps the covariance of the weight increments equal to the
  small-batch one), 1 is the linear rule of Goyal et al. 2017.
- Regime adaptation (+RA): the number of epochs and every LR-decay epoch are multiplied by
  `regime_multiplier`; the word "matched" means ceil(B / B0), as in the authors' code, which
  gives the large batch as many weight updates as the small one.

Warm-up is kept in epochs, not multiplied: Goyal et al. define it as a fixed number of epochs
(`scale_warmup` multiplies it too). It ramps linearly from `warmup_start_factor` x lr.

`max_updates` replaces the epochs by a budget of weight updates (Shallue et al. 2018): the
run stops after that many, and the decay points keep their place as fractions of the run.

The authors' code writes a regime as {epoch: {lr, weight_decay, ...}}. Most are a step decay
by one factor; the others (a rising step, uneven drops, weight decay switched off) are given
step by step with `lr_factors` and `weight_decays`, which move with the decay epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

MATCHED = "matched"
MULTIPLIER_WORDS = (MATCHED,)
# How the lr moves after warm-up: the workload's decay steps, a cosine or a straight line to
# zero over the whole run, or not at all.
Schedule = Literal["step", "cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def parse_regime_multiplier(value: object) -> float | str:
    """Check a regime multiplier: a finite number > 0, or the word "matched".

    Multipliers below 1 (shorter training) are allowed as long as they are positive, since a
    study may ask how fast the gap opens; zero, negative or non-finite values are not.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in MULTIPLIER_WORDS:
            return word
        try:
            value = float(word)
        except ValueError:
            raise ValueError(
                f"regime_multiplier {value!r} is not allowed: use a positive number or "
                f"one of {', '.join(MULTIPLIER_WORDS)}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"regime_multiplier {value!r} is not allowed: use a positive number or "
            f"one of {', '.join(MULTIPLIER_WORDS)}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"regime_multiplier {value!r} is not allowed: use a finite number > 0 or "
            f"one of {', '.join(MULTIPLIER_WORDS)}"
        )
    return float(value)


def check_positive_int(name: str, value: object) -> int:
    """Return `value` if it is a positive integer (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} {value!r} is not allowed: use a positive integer")
    return value


def check_exponent(value: object) -> float:
    """An LR-scaling exponent: a finite number >= 0 (0 = no scaling, 0.5 sqrt, 1 linear)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"lr_exponent {value!r} is not allowed: use a finite number >= 0")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"lr_exponent {value!r} is not allowed: use a finite number >= 0")
    return float(value)


def check_step_values(
    name: str, values: object, steps: int, *, positive: bool, allow_none: bool
) -> tuple:
    """One value per decay epoch (or none at all), each finite and > 0 (`positive`) or >= 0."""
    if not isinstance(values, tuple | list):
        raise ValueError(
            f"{name} {values!r} is not allowed: give a tuple with one value per decay epoch"
        )
    values = tuple(values)
    if values and len(values) != steps:
        raise ValueError(
            f"{name} has {len(values)} values for {steps} decay epochs: give one per decay "
            "epoch, or none"
        )
    allowed = ("finite numbers > 0" if positive else "finite numbers >= 0") + (
        " or None" if allow_none else ""
    )
    for v in values:
        if v is None and allow_none:
            continue
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if not (number and math.isfinite(v) and (v > 0 if positive else v >= 0)):
            raise ValueError(f"{name} value {v!r} is not allowed: use {allowed}")
    return values


@dataclass(frozen=True)
class ResolvedRegime:
    """The concrete schedule of one trial at one batch size."""

    batch_size: int
    lr: float
    epochs: int
    # Fractional only under a budget of updates (`max_updates`).
    decay_epochs: tuple[float, ...]
    # lr from each decay epoch on, as a multiple of `lr` (one per decay epoch).
    lr_factors: tuple[float, ...]
    # Weight decay before the first decay epoch, then from each decay epoch on.
    weight_decays: tuple[float, ...]
    warmup_epochs: float
    clip_norm: float | None
    multiplier: float
    updates_per_epoch: int | None
    total_updates: int | None
    schedule: Schedule = "step"
    warmup_start_factor: float = 0.0
    # Set when the run is a budget of updates: it ends mid-epoch, after exactly this many.
    max_updates: int | None = None

    @property
    def run_epochs(self) -> float:
        """The run's length in (fractional) epochs: what cosine and linear decay run over."""
        if self.max_updates is not None and self.updates_per_epoch:
            return self.max_updates / self.updates_per_epoch
        return float(self.epochs)

    def _phase(self, epoch_progress: float) -> int:
        return sum(epoch_progress >= d for d in self.decay_epochs)

    def lr_at(self, epoch_progress: float) -> float:
        """Learning rate at a fractional epoch (e.g. 3.25 = a quarter into the 4th epoch).

        Linear warm-up over `warmup_epochs` from `warmup_start_factor` x lr (0: from one
        update's worth of the ramp) to lr. After it, by `schedule`: "step" gives, from each
        decay epoch on, `lr` times that step's factor; "cosine" lr * (1 + cos(pi t / T)) / 2
        and "linear" lr * (1 - t / T) over the run's T epochs; "constant" lr.
        """
        lr = self.lr * self._decay(epoch_progress)
        if self.warmup_epochs > 0 and epoch_progress < self.warmup_epochs:
            ramp = min(1.0, (epoch_progress + self._warmup_floor()) / self.warmup_epochs)
            lr *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * ramp
        return lr

    def _decay(self, epoch_progress: float) -> float:
        if self.schedule == "constant":
            return 1.0
        if self.schedule in ("cosine", "linear"):
            t = min(1.0, max(0.0, epoch_progress / self.run_epochs))
            return 0.5 * (1.0 + math.cos(math.pi * t)) if self.schedule == "cosine" else 1.0 - t
        phase = self._phase(epoch_progress)
        return self.lr_factors[phase - 1] if phase else 1.0

    def weight_decay_at(self, epoch_progress: float) -> float:
        """Weight decay at a fractional epoch (it changes only at decay epochs)."""
        return self.weight_decays[self._phase(epoch_progress)]

    def _warmup_floor(self) -> float:
        # The first update already uses a non-zero rate: one update's worth of progress.
        return 1.0 / self.updates_per_epoch if self.updates_per_epoch else 0.0

    def as_dict(self) -> dict[str, object]:
        """Flat `resolved_*` entries for MLflow params and result tables."""
        return {
            "resolved_lr": self.lr,
            "resolved_epochs": self.epochs,
            "resolved_decay_epochs": ",".join(str(d) for d in self.decay_epochs),
            "resolved_multiplier": self.multiplier,
            "resolved_total_updates": self.total_updates,
            "resolved_lr_schedule": self._changes_text(
                (self.lr, *(self.lr * f for f in self.lr_factors))
            ),
            "resolved_weight_decay_schedule": self._changes_text(self.weight_decays),
            "resolved_schedule": self.schedule,
            "resolved_warmup_epochs": self.warmup_epochs,
            "resolved_max_updates": self.max_updates,
        }

    def _changes_text(self, values: tuple[float, ...]) -> str:
        """'epoch:value' from epoch 0 and where the value changes, e.g. '0:0.1,81:0.01'
        (a "step" schedule's; the others name themselves in `resolved_schedule`).

        Decay epochs that a short regime rounds onto one epoch show once, with the value
        that holds after them; those at or past the end never act and are left out. The lr
        is the one after warm-up, which `warmup_epochs` ramps up to.
        """
        holds: dict[int, float] = {}
        for epoch, value in zip((0, *self.decay_epochs), values, strict=True):
            if epoch == 0 or epoch < self.epochs:
                holds[epoch] = value
        parts: list[str] = []
        last = None
        for epoch, value in holds.items():
            if value != last:
                parts.append(f"{epoch:g}:{value:.6g}")
                last = value
        return ",".join(parts)


@dataclass(frozen=True, kw_only=True)
class Regime:
    """A base training regime defined at `base_batch_size`, plus the two scaling rules.

    lr = base_lr * (B / B0) ** lr_exponent; epochs and decay epochs times the regime
    multiplier ("matched" = ceil(B / B0): as many updates as the small batch).

    >>> r = Regime(base_lr=0.05, base_batch_size=32, epochs=20, decay_epochs=(10, 15),
    ...            lr_exponent=0.5, regime_multiplier="matched")
    >>> resolved = r.resolve(2048)
    >>> round(resolved.lr, 3), resolved.epochs, resolved.decay_epochs
    (0.4, 1280, (640, 960))
    """

    base_lr: float
    base_batch_size: int
    epochs: int
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1
    lr_exponent: float = 0.0
    regime_multiplier: float | str = 1.0
    warmup_epochs: float = 0.0
    clip_norm: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # lr from each decay epoch on, as a multiple of base_lr (so steps may rise or drop
    # unevenly; decay_factor is then unused); empty: decay_factor ** k after the k-th
    # decay epoch.
    lr_factors: tuple[float, ...] = ()
    # Weight decay from each decay epoch on, None keeping the one before; empty: weight_decay
    # throughout.
    weight_decays: tuple[float | None, ...] = ()
    schedule: Schedule = "step"
    warmup_start_factor: float = 0.0
    # Warm-up epochs times the regime multiplier as well (Goyal et al. keep them fixed).
    scale_warmup: bool = False
    max_updates: int | None = None
    # The batch size the lr rule and "matched" count from, where it is not base_batch_size
    # (the authors' code: 256, or the ghost size in main_gbn.py).
    reference_batch_size: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_lr) and self.base_lr > 0):
            raise ValueError(f"base_lr {self.base_lr!r} is not allowed: use a number > 0")
        check_positive_int("base_batch_size", self.base_batch_size)
        check_positive_int("epochs", self.epochs)
        object.__setattr__(self, "decay_epochs", tuple(self.decay_epochs))
        for d in self.decay_epochs:
            if isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= self.epochs:
                raise ValueError(
                    f"decay epoch {d!r} is not allowed: use integers in 1..epochs ({self.epochs})"
                )
        if list(self.decay_epochs) != sorted(self.decay_epochs):
            raise ValueError(f"decay_epochs {self.decay_epochs} must be increasing")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"decay_factor {self.decay_factor!r} is not allowed: use 0 < f <= 1")
        object.__setattr__(self, "lr_exponent", check_exponent(self.lr_exponent))
        object.__setattr__(
            self, "regime_multiplier", parse_regime_multiplier(self.regime_multiplier)
        )
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs {self.warmup_epochs!r} is not allowed: use >= 0")
        if self.clip_norm is not None and not (
            math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise ValueError(f"clip_norm {self.clip_norm!r} is not allowed: use > 0 or None")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay {self.weight_decay!r} is not allowed: use >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule {self.schedule!r} is not allowed: use one of {', '.join(SCHEDULES)}"
            )
        if not (math.isfinite(self.warmup_start_factor) and 0 <= self.warmup_start_factor <= 1):
            raise ValueError(
                f"warmup_start_factor {self.warmup_start_factor!r} is not allowed: use 0..1"
            )
        if self.max_updates is not None:
            check_positive_int("max_updates", self.max_updates)
        if self.reference_batch_size is not None:
            check_positive_int("reference_batch_size", self.reference_batch_size)
        steps = len(self.decay_epochs)
        object.__setattr__(
            self,
            "lr_factors",
            check_step_values(
                "lr_factors", self.lr_factors, steps, positive=True, allow_none=False
            ),
        )
        object.__setattr__(
            self,
            "weight_decays",
            check_step_values(
                "weight_decays", self.weight_decays, steps, positive=False, allow_none=True
            ),
        )

    def step_lr_factors(self) -> tuple[float, ...]:
        """lr from each decay epoch on, as a multiple of base_lr."""
        if self.lr_factors:
            return tuple(float(f) for f in self.lr_factors)
        return tuple(self.decay_factor ** (k + 1) for k in range(len(self.decay_epochs)))

    def step_weight_decays(self) -> tuple[float | None, ...]:
        """Weight decay set at each decay epoch (None: unchanged)."""
        return self.weight_decays or (None,) * len(self.decay_epochs)

    def phase_weight_decays(self) -> tuple[float, ...]:
        """Weight decay before the first decay epoch, then from each decay epoch on."""
        phases = [float(self.weight_decay)]
        for wd in self.step_weight_decays():
            phases.append(phases[-1] if wd is None else float(wd))
        return tuple(phases)

    def with_epochs(self, epochs: int) -> Regime:
        """This regime stretched or shrunk to `epochs`, decay epochs moved in proportion.

        Steps that land on the same epoch merge into one with the later step's lr (so the
        lr after it is what it was after both); steps at or past the end are dropped (they
        would never act). The steps are then spelled out in `lr_factors`, since counting
        decay_factor ** k over the merged steps would give another lr.
        """
        check_positive_int("epochs", epochs)
        if epochs == self.epochs:
            return self
        scale = epochs / self.epochs
        moved: dict[int, tuple[float, float | None]] = {}
        steps = zip(
            self.decay_epochs, self.step_lr_factors(), self.step_weight_decays(), strict=True
        )
        for d, f, wd in steps:
            at = min(epochs, max(1, round(d * scale)))
            # A merged step keeps the weight decay set by either of the steps it merges.
            prior = moved.get(at, (f, None))[1]
            moved[at] = (f, wd if wd is not None else prior)
        kept = sorted(at for at in moved if at < epochs)
        return replace(
            self,
            epochs=epochs,
            decay_epochs=tuple(kept),
            lr_factors=tuple(moved[at][0] for at in kept),
            weight_decays=tuple(moved[at][1] for at in kept),
        )

    def multiplier_for(self, batch_size: int) -> float:
        """The numeric regime multiplier at this batch size ("matched" = ceil(B/B0))."""
        if self.regime_multiplier == MATCHED:
            return float(math.ceil(batch_size / self.reference))
        return float(self.regime_multiplier)

    @property
    def reference(self) -> int:
        """The batch size B0 that the lr rule and "matched" count from."""
        return self.reference_batch_size or self.base_batch_size

    def lr_for(self, batch_size: int) -> float:
        """base_lr * (B / B0) ** lr_exponent."""
        return self.base_lr * (batch_size / self.reference) ** self.lr_exponent

    def resolve(self, batch_size: int, train_size: int | None = None) -> ResolvedRegime:
        """The concrete lr, epochs and decay epochs at `batch_size`.

        With `train_size` (number of training samples) it also gives updates per epoch and in
        total; the last, smaller batch of an epoch counts as an update (no samples dropped).
        """
        check_positive_int("batch_size", batch_size)
        mult = self.multiplier_for(batch_size)
        epochs = max(1, round(self.epochs * mult))
        decay: tuple[float, ...] = tuple(max(1, round(d * mult)) for d in self.decay_epochs)
        per_epoch = None if train_size is None else math.ceil(train_size / batch_size)
        total = None if per_epoch is None else per_epoch * epochs
        warmup = self.warmup_epochs * (mult if self.scale_warmup else 1.0)
        if self.max_updates is not None:
            # The budget sets the length; decay points keep their fraction of the run. With
            # no training-set size, one update per epoch bounds the epochs from above.
            run = self.max_updates / (per_epoch or 1)
            mult, epochs, total = 1.0, math.ceil(run), self.max_updates
            decay = tuple(round(d / self.epochs * run, 6) for d in self.decay_epochs)
        return ResolvedRegime(
            batch_size=batch_size,
            lr=self.lr_for(batch_size),
            epochs=epochs,
            decay_epochs=decay,
            lr_factors=self.step_lr_factors(),
            weight_decays=self.phase_weight_decays(),
            warmup_epochs=warmup,
            clip_norm=self.clip_norm,
            multiplier=mult,
            updates_per_epoch=per_epoch,
            total_updates=total,
            schedule=self.schedule,
            warmup_start_factor=self.warmup_start_factor,
            max_updates=self.max_updates,
        )
