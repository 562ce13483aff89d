"""A study expanded once, for the run: `StudyPlan.of(study)` holds the first trial configs
(baseline first, duplicates removed), the baseline, the cells they form, the batch sizes
trained, and the trial budget Tune is given. `run_study` makes it once and hands it down;
nothing below expands the study again (`Study.expansions` counts it)."""

from __future__ import annotations

from dataclasses import dataclass

from tunegap.analysis.decide import cell_key
from tunegap.config import TrialConfig
from tunegap.study import Study, is_baseline, total_trials
from tunegap.study_checks import AUTO


@dataclass(frozen=True)
class StudyPlan:
    """What a study will run (see the module).

    >>> from tunegap import Study
    >>> plan = StudyPlan.of(Study(name="g", workload="mnist1d-cnn", seeds=2,
    ...                           grid={"batch_size": (512,), "ghost_batch_size": (None, 32)}))
    >>> len(plan.configs), plan.total_trials, len(plan.cells), plan.baseline.batch_size
    (6, 6, 3, 32)
    """

    study: Study
    configs: tuple[TrialConfig, ...]
    total_trials: int

    @classmethod
    def of(cls, study: Study) -> StudyPlan:
        return cls(study=study, configs=tuple(study.trial_configs()),
                   total_trials=total_trials(study))

    @property
    def baselines(self) -> tuple[TrialConfig, ...]:
        """The baseline's configs, one per seed (the study's baseline rule, `is_baseline`)."""
        shared = self.study.trial_settings()
        epochs = self.study.baseline_epochs_override
        return tuple(c for c in self.configs
                     if is_baseline(c.to_dict(), shared, epochs=epochs))

    @property
    def baseline(self) -> TrialConfig | None:
        """Seed 0's baseline config (None for a study without one)."""
        return next((c for c in self.baselines if c.seed == 0), None)

    @property
    def cells(self) -> tuple[str, ...]:
        """The cells of the first trials (`tunegap.study.cell_key`), in order."""
        return tuple(dict.fromkeys(cell_key(c.to_dict()) for c in self.configs))

    @property
    def batch_sizes(self) -> set[int]:
        """Every batch size the study may train with: its grid's and its configs'."""
        grid = {int(b) for b in self.study.grid.get("batch_size", ())}
        return grid | {c.batch_size for c in self.configs}

    @property
    def optimizers(self) -> set[str]:
        return {c.optimizer for c in self.configs}

    @property
    def adaptive(self) -> bool:
        """Whether seeds are decided as results come in (at most `total_trials` run)."""
        return self.study.seeds == AUTO or self.study.search == "frontier"
