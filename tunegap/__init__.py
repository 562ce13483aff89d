"""tunegap: map where the large-batch generalization gap closes.

Implements Hoffer, Hubara & Soudry, "Train longer, generalize better" (NeurIPS 2017):
Ghost Batch Normalization, learning-rate scaling and regime adaptation, run as Ray Tune
studies and logged to MLflow.

Bring your own model and data, and run a study on them::

    import torch
    from torch import nn
    import tunegap

    @tunegap.register_model("my-mlp")
    def my_mlp(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(40, 64), nn.BatchNorm1d(64), nn.ReLU(),
                             nn.Linear(64, num_classes))

    @tunegap.register_dataset("my-data")
    def my_data() -> dict:
        x, y = torch.randn(1200, 1, 40), torch.randint(0, 4, (1200,))
        return {"x_train": x[:1000], "y_train": y[:1000], "x_test": x[1000:],
                "y_test": y[1000:], "num_classes": 4}

    tunegap.register_workload(tunegap.Workload(
        name="my-workload", model="my-mlp", dataset="my-data",
        regime=tunegap.Regime(base_lr=0.05, base_batch_size=32, epochs=4, decay_epochs=(2, 3))))
    study = tunegap.Study(name="my_study", workload="my-workload",
                          grid={"batch_size": (256,), "ghost_batch_size": (None, 32)})
    outcome = tunegap.run_study(study, options=tunegap.RunOptions(storage_path="./results"))
    print(outcome.cells)        # one row per cell: gap to the small batch and its verdict

Names are imported on first use, so `import tunegap` stays cheap (no torch, no Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_HOMES = {
    "Study": "tunegap.study",
    "RunOptions": "tunegap.runner.options",
    "StudyError": "tunegap.errors",
    "run_study": "tunegap.runner.run",
    "StudyOutcome": "tunegap.runner.run",
    "Workload": "tunegap.workloads",
    "register_workload": "tunegap.workloads",
    "get_workload": "tunegap.workloads",
    "Regime": "tunegap.regime",
    "TrialConfig": "tunegap.config",
    "TensorData": "tunegap.data",
    "register_dataset": "tunegap.data",
    "register_model": "tunegap.models",
    "register_optimizer": "tunegap.optim",
    "load_plugins": "tunegap.registry",
    "GhostBatchNorm1d": "tunegap.gbn",
    "GhostBatchNorm2d": "tunegap.gbn",
    "convert_to_ghost_bn": "tunegap.gbn_convert",
}

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "Regime",
    "RunOptions",
    "Study",
    "StudyError",
    "StudyOutcome",
    "TensorData",
    "TrialConfig",
    "Workload",
    "convert_to_ghost_bn",
    "get_workload",
    "load_plugins",
    "register_dataset",
    "register_model",
    "register_optimizer",
    "register_workload",
    "run_study",
]

if TYPE_CHECKING:
    from tunegap.config import TrialConfig
    from tunegap.data import TensorData, register_dataset
    from tunegap.errors import StudyError
    from tunegap.gbn import GhostBatchNorm1d, GhostBatchNorm2d
    from tunegap.gbn_convert import convert_to_ghost_bn
    from tunegap.models import register_model
    from tunegap.optim import register_optimizer
    from tunegap.regime import Regime
    from tunegap.registry import load_plugins
    from tunegap.runner.options import RunOptions
    from tunegap.runner.run import StudyOutcome, run_study
    from tunegap.study import Study
    from tunegap.workloads import Workload, get_workload, register_workload


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tunegap' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
