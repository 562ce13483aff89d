"""Your own model and data through tunegap: register them, then run a small study on Ray.

    python examples/custom_workload.py
    tunegap run ghost_size --plugin examples/custom_workload.py --workload waves-net --epochs 2
"""

import torch
from torch import nn

import tunegap


@tunegap.register_model("waves-net")
def waves_net(num_classes: int, width: int = 32) -> nn.Module:
    # BatchNorm layers become Ghost BatchNorm in trials that set ghost_batch_size.
    return nn.Sequential(
        nn.Conv1d(1, width, 5, stride=2, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
        nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(4 * width, num_classes))


@tunegap.register_dataset("waves")
def waves(num_samples: int = 4000, seed: int = 0) -> dict:
    # Noisy sine waves, one frequency per class: (samples, channels, length) and labels.
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (num_samples,), generator=g)
    t = torch.linspace(0, 6.28, 64)
    x = torch.sin((y[:, None] + 1) * t + 6.28 * torch.rand(num_samples, 1, generator=g))
    x = (x + 0.8 * torch.randn(x.shape, generator=g)).unsqueeze(1)
    n = num_samples * 3 // 4
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:], "num_classes": 4}


tunegap.register_workload(tunegap.Workload(
    name="waves-net", model="waves-net", dataset="waves", large_batch_size=1024,
    regime=tunegap.Regime(base_lr=0.05, base_batch_size=32, epochs=4, decay_epochs=(2, 3))))

if __name__ == "__main__":
    study = tunegap.Study(name="waves_ghost", workload="waves-net", seeds=2, grid={
        "batch_size": (1024,), "ghost_batch_size": (None, 32), "lr_exponent": (0.5,)})
    outcome = tunegap.run_study(study, options=tunegap.RunOptions(quiet=True))
    print(outcome.cells[["batch_size", "ghost_batch_size", "test_acc_mean", "gap"]])
    print(outcome.result_grid.get_dataframe()[["test_acc", "config/batch_size"]])
