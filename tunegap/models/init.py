"""Initializations a trial may ask for on top of a model's own: the BatchNorm weight init and
the zero init of residual branches.

- `init_bn_weights(model, "uniform", seed=s)`: BatchNorm weights ~ U(0, 1), PyTorch's default
  in 2017 (`BatchNorm.reset_parameters` did ``weight.uniform_()``), which the authors of
  "Train longer, generalize better" kept everywhere but in their ResNet/WRN code; ``"one"``
  is PyTorch's present default. Biases are left as they are (0 in both versions).
- `zero_init_residual(model)`: the last BatchNorm weight of every residual branch set to 0
  (Goyal et al. 2017, "Accurate, large minibatch SGD", section 5.1), so each block starts as
  the identity.

Call order for a trial: build the model, `init_bn_weights`, then `zero_init_residual` (the
other way round the uniform draw overwrites the zeros). Either may run before or after
`tunegap.gbn_convert.convert_to_ghost_bn`: the conversion keeps the same parameter tensors and
Ghost BN layers are BatchNorm subclasses. The result is the same either way.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from tunegap.models.resnet import BasicBlock

__all__ = ["BN_WEIGHT_INITS", "RESIDUAL_MODELS", "init_bn_weights", "zero_init_residual"]

BnWeightInit = Literal["one", "uniform"]
BN_WEIGHT_INITS: tuple[str, ...] = get_args(BnWeightInit)

# Registered model names built from `tunegap.models.resnet.BasicBlock` (ResNet and WRN).
RESIDUAL_MODELS = ("cifar_resnet", "resnet44", "wrn16_4")


def _affine_norms(model: nn.Module) -> list[_NormBase]:
    """BatchNorm-family layers (incl. Ghost BN) that have a weight, in `modules()` order."""
    return [
        m for m in model.modules() if isinstance(m, _NormBase) and m.weight is not None
    ]


@torch.no_grad()
def init_bn_weights(model: nn.Module, mode: str, *, seed: int) -> int:
    """Set every affine BatchNorm / Ghost BN weight of `model`: ``"one"`` to 1, ``"uniform"``
    from U(0, 1) drawn with a CPU `torch.Generator` seeded with `seed` (the global RNG is
    left alone, so the rest of the trial's randomness does not shift). Returns how many
    layers were set.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4))
    >>> init_bn_weights(net, "uniform", seed=0)
    1
    >>> bool(((net[1].weight > 0) & (net[1].weight < 1)).all())
    True
    """
    if mode not in BN_WEIGHT_INITS:
        raise ValueError(
            f"bn_weight_init {mode!r} is not allowed: use one of {', '.join(BN_WEIGHT_INITS)}"
        )
    norms = _affine_norms(model)
    generator = torch.Generator().manual_seed(seed)
    for m in norms:
        if mode == "one":
            m.weight.fill_(1.0)
        else:
            # Drawn on the CPU so the values depend on the seed only, not on the device.
            values = torch.rand(m.weight.shape, generator=generator, dtype=torch.float64)
            m.weight.copy_(values)
    return len(norms)


@torch.no_grad()
def zero_init_residual(model: nn.Module) -> int:
    """Zero the weight of the last BatchNorm (``bn2``) of every residual block of `model`;
    returns the number of blocks. Works on plain and Ghost-BN-converted models alike.

    >>> from tunegap.models import build_model
    >>> zero_init_residual(build_model("cifar_resnet", depth=8))
    3
    """
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise ValueError(
            "zero_init_residual needs a model with residual blocks (resnet, wrn): "
            f"{type(model).__name__} has none"
        )
    for block in blocks:
        block.bn2.weight.zero_()
    return len(blocks)
