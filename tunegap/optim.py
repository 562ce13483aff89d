"""Optimizers by name, with BatchNorm/bias excluded from weight decay on request, and LARS.

`build_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)` returns a torch
optimizer whose parameters sit in at most two groups, each tagged with a ``"no_decay"`` key:

- ``"no_decay": False``: every other parameter, with the requested weight decay;
- ``"no_decay": True`` (only with ``no_decay_bn_bias``, and always for LARS): the weights and
  biases of normalization layers (BatchNorm, Ghost BatchNorm, GroupNorm, LayerNorm, ...) and
  every bias, with weight decay 0.

The tag is what `set_weight_decay` and `LARS` read, so a weight-decay schedule never puts
decay back on the excluded parameters. `reset_momentum` drops all per-parameter state, which
is what the authors of "Train longer, generalize better" got by building a new SGD every
epoch (github.com/eladhoffer/bigBatch, `adjust_optimizer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from tunegap.registry import Registry

__all__ = ["LARS", "OPTIMIZERS", "OptimizerSpec", "build_optimizer", "check_optimizer",
           "optimizer_spec", "register_optimizer", "reset_momentum", "set_weight_decay"]

# builder(param_groups, *, lr, momentum, weight_decay) -> a torch optimizer. The groups carry
# their own weight decay (0 for the excluded parameters); `weight_decay` is the requested
# one, for optimizers that apply it themselves (LARS).
OptimizerBuilder = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: its builder and the rules that go with its name.

    `needs_momentum`: momentum 0 is refused (Nesterov). `exclude_norm_and_bias`:
    normalization parameters and biases never get weight decay (LARS). `default_momentum`:
    the momentum used where none is given, instead of the workload's (Adam's beta1).
    """

    build: OptimizerBuilder
    needs_momentum: bool = False
    exclude_norm_and_bias: bool = False
    default_momentum: float | None = None


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(name: str, *, needs_momentum: bool = False,
                       exclude_norm_and_bias: bool = False,
                       default_momentum: float | None = None,
                       replace: bool = False) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Decorator: register an optimizer builder under `name`, usable as `--optimizer name`
    (a `--plugin` file can add one; trials on other nodes receive it with the workload).

    >>> @register_optimizer("sgd-half-momentum", replace=True)
    ... def half(groups, *, lr, momentum, weight_decay):
    ...     return torch.optim.SGD(groups, lr=lr, momentum=momentum / 2)
    >>> net = nn.Linear(2, 2)
    >>> build_optimizer(net, "sgd-half-momentum", lr=0.1, momentum=0.9,
    ...                 weight_decay=0.0).param_groups[0]["momentum"]
    0.45
    >>> OPTIMIZERS.remove("sgd-half-momentum")
    """
    def add(builder: OptimizerBuilder) -> OptimizerBuilder:
        OPTIMIZERS.add(name, OptimizerSpec(builder, needs_momentum, exclude_norm_and_bias,
                                           default_momentum), replace=replace)
        return builder

    return add


def optimizer_spec(name: str) -> OptimizerSpec:
    """The registered optimizer `name`, or one line naming the registered ones."""
    if not isinstance(name, str):
        raise ValueError(f"optimizer {name!r} is not allowed: use one of "
                         f"{', '.join(OPTIMIZERS.names())}")
    return OPTIMIZERS.get(name)


def check_optimizer(name: str, momentum: float | None) -> OptimizerSpec:
    """The one check of an optimizer name and its momentum (a config, the optimizer's build)."""
    spec = optimizer_spec(name)
    if spec.needs_momentum and momentum == 0:
        raise ValueError(f"momentum 0 is not allowed with optimizer {name}: use a momentum "
                         "> 0, or optimizer sgd")
    return spec

# Normalization layers whose affine parameters are scale/shift of a normalized signal:
# decaying them only fights the normalization. _NormBase covers BatchNorm*, Ghost BN
# (a BatchNorm subclass), SyncBatchNorm and InstanceNorm*.
_NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def _check_hyper(name: str, value: float, *, upper: float | None = None) -> float:
    """A finite, non-negative float (below `upper` where given), or one line naming it."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
        and (upper is None or value < upper)
    )
    if not ok:
        allowed = "a finite number >= 0" + (f" and < {upper:g}" if upper is not None else "")
        raise ValueError(f"{name} {value!r} is not allowed: use {allowed}")
    return float(value)


def split_decay_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) parameters of `model`: normalization-layer parameters and every
    bias go to the second list. A parameter shared by several modules is listed once.

    >>> from torch import nn
    >>> decay, no_decay = split_decay_params(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    >>> [tuple(p.shape) for p in decay], [tuple(p.shape) for p in no_decay]
    ([(4, 3)], [(4,), (4,), (4,)])
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if is_norm or name.endswith("bias") else decay).append(param)
    return decay, no_decay


def _param_groups(
    model: nn.Module, weight_decay: float, split: bool
) -> list[dict[str, Any]]:
    if not split:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay,
                 "no_decay": False}]
    decay, no_decay = split_decay_params(model)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "no_decay": False},
        {"params": no_decay, "weight_decay": 0.0, "no_decay": True},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    no_decay_bn_bias: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer `name` (registered in `OPTIMIZERS`) over `model`'s parameters.

    sgd: SGD with heavy-ball `momentum`; nesterov: SGD with Nesterov momentum (momentum must
    be > 0); adam: Adam with betas (momentum, 0.999) and L2 weight decay (added to the
    gradient); adamw: AdamW with the same betas and decoupled weight decay; lars: `LARS`,
    whose normalization/bias parameters are always excluded from decay and the trust ratio.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    >>> opt = build_optimizer(net, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
    ...                       no_decay_bn_bias=True)
    >>> [(g["no_decay"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    [(False, 0.0005, 1), (True, 0.0, 3)]
    """
    lr = _check_hyper("lr", lr)
    momentum = _check_hyper("momentum", momentum, upper=1.0)
    weight_decay = _check_hyper("weight_decay", weight_decay)
    spec = check_optimizer(name, momentum)
    groups = _param_groups(model, weight_decay,
                           split=no_decay_bn_bias or spec.exclude_norm_and_bias)
    return spec.build(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


@register_optimizer("sgd")
def _sgd(groups: list[dict[str, Any]], *, lr: float, momentum: float,
         weight_decay: float) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum (the paper's)."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


@register_optimizer("nesterov", needs_momentum=True)
def _nesterov(groups: list[dict[str, Any]], *, lr: float, momentum: float,
              weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


@register_optimizer("adam", default_momentum=0.9)
def _adam(groups: list[dict[str, Any]], *, lr: float, momentum: float,
          weight_decay: float) -> torch.optim.Optimizer:
    """Adam, betas (momentum, 0.999), L2 weight decay added to the gradient."""
    return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))


@register_optimizer("adamw", default_momentum=0.9)
def _adamw(groups: list[dict[str, Any]], *, lr: float, momentum: float,
           weight_decay: float) -> torch.optim.Optimizer:
    """AdamW: the same betas, decoupled weight decay."""
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


@register_optimizer("lars", exclude_norm_and_bias=True)
def _lars(groups: list[dict[str, Any]], *, lr: float, momentum: float,
          weight_decay: float) -> torch.optim.Optimizer:
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling: You, Gitman & Ginsburg 2017, "Large Batch Training
    of Convolutional Networks" (arXiv 1708.03888), Algorithm 1.

    For each parameter w of a group without ``"no_decay"`` (a layer's weight):
    ``local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)`` (1 where
    ||w|| or ||g|| is 0), ``v = momentum * v + lr * local_lr * (g + weight_decay * w)``,
    ``w -= v``. Groups with ``"no_decay": True`` get plain momentum SGD: ``v = momentum * v
    + lr * g``, no trust ratio, no weight decay. The last ratio is kept as
    ``state[p]["trust_ratio"]`` (a 0-d tensor; the ratio is computed on the device, without a
    host sync).

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = LARS([w], lr=1.0, momentum=0.0, trust_coefficient=0.5)
    >>> w.grad = torch.ones(2)
    >>> opt.step()
    >>> w.detach(), opt.state[w]["trust_ratio"]
    (tensor([0.5000, 0.5000]), tensor(0.5000))
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-9,
    ) -> None:
        defaults = {
            "lr": _check_hyper("lr", lr),
            "momentum": _check_hyper("momentum", momentum, upper=1.0),
            "weight_decay": _check_hyper("weight_decay", weight_decay),
            "trust_coefficient": _check_hyper("trust_coefficient", trust_coefficient),
            "eps": _check_hyper("eps", eps),
            "no_decay": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        assert grad is not None
        lr, momentum = group["lr"], group["momentum"]
        state = self.state[p]
        if group["no_decay"]:
            step = grad.mul(lr)
        else:
            wd = group["weight_decay"]
            w_norm = torch.linalg.vector_norm(p)
            g_norm = torch.linalg.vector_norm(grad)
            ratio = torch.where(
                (w_norm > 0) & (g_norm > 0),
                group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"]),
                torch.ones_like(w_norm),
            )
            state["trust_ratio"] = ratio
            step = grad.add(p, alpha=wd) if wd else grad.clone()
            step.mul_(ratio * lr)
        buf = state.get("momentum_buffer")
        if buf is None:
            # The first step with a zero buffer: v = step.
            state["momentum_buffer"] = buf = step
        else:
            buf.mul_(momentum).add_(step)
        p.sub_(buf)


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set `weight_decay` on every group except those tagged ``"no_decay": True``.

    Groups without the tag (an optimizer not built by `build_optimizer`) count as decayed.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    >>> opt = build_optimizer(net, "lars", lr=0.1, momentum=0.9, weight_decay=5e-4)
    >>> set_weight_decay(opt, 1e-4)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.0001, 0.0]
    """
    weight_decay = _check_hyper("weight_decay", weight_decay)
    for group in optimizer.param_groups:
        if not group.get("no_decay", False):
            group["weight_decay"] = weight_decay


def reset_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Drop all per-parameter state (momentum buffers, Adam moments and step counts), so the
    next step is that of a freshly built optimizer with the same groups.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> w.grad = torch.ones(2)
    >>> opt.step()
    >>> reset_momentum(opt)
    >>> len(opt.state)
    0
    """
    optimizer.state.clear()
