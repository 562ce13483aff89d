"""Swapping BatchNorm for Ghost BatchNorm in a model and back (`convert_to_ghost_bn`,
`convert_to_batch_norm`): every layer is rebuilt around the same parameter and buffer
tensors, so devices, values and an optimizer that holds them stay valid."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tunegap.gbn import (
    GhostBatchNorm,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    Split,
    check_ghost_batch_size,
    check_split,
)

__all__ = ["convert_to_batch_norm", "convert_to_ghost_bn"]


_TO_GHOST: dict[type[nn.Module], type[GhostBatchNorm]] = {
    nn.BatchNorm1d: GhostBatchNorm1d,
    nn.BatchNorm2d: GhostBatchNorm2d,
}
_TO_PLAIN: dict[type[nn.Module], type[_BatchNorm]] = {
    GhostBatchNorm1d: nn.BatchNorm1d,
    GhostBatchNorm2d: nn.BatchNorm2d,
}


def _rebuild(old: _BatchNorm, cls: type[_BatchNorm], **kwargs: object) -> _BatchNorm:
    """A `cls` layer that shares `old`'s parameter and buffer tensors (same objects).

    Sharing, not copying, keeps device, dtype and values, and keeps an optimizer that
    already holds the parameters valid.
    """
    new = cls(
        old.num_features,
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device="meta",
        **kwargs,
    )
    for name in ("weight", "bias"):
        setattr(new, name, getattr(old, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(old, name))
    new.train(old.training)
    return new


def _replace(
    model: nn.Module, convert: dict[type[nn.Module], type[_BatchNorm]], **kwargs: object
) -> nn.Module:
    if type(model) in convert:
        return _rebuild(model, convert[type(model)], **kwargs)  # type: ignore[arg-type]
    for name, child in model.named_children():
        new = _replace(child, convert, **kwargs)
        if new is not child:
            setattr(model, name, new)
    return model


def convert_to_ghost_bn(
    model: nn.Module, ghost_batch_size: int | None, *, split: Split = "fixed"
) -> nn.Module:
    """Turn every `nn.BatchNorm1d` / `nn.BatchNorm2d` in `model` into its ghost version.

    >>> from torch import nn
    >>> net = convert_to_ghost_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), 32)
    >>> type(net[1]).__name__, net[1].ghost_batch_size
    ('GhostBatchNorm2d', 32)

    `split` is how a batch that is not a multiple of the ghost size is split: "fixed" or the
    authors' "chunk" (see `GhostBatchNorm`). Layers that already are Ghost BatchNorm get the
    new ghost size and split. Parameters and buffers
    (running statistics, `num_batches_tracked`) are carried over as the same tensors, with
    momentum, eps, affine, track_running_stats and the train/eval mode. Only these exact
    types are converted: a user subclass of BatchNorm may rely on its own forward. Modules
    are replaced in place; the (possibly new, if `model` itself is a BatchNorm) model is
    returned.
    """
    ghost = check_ghost_batch_size(ghost_batch_size)
    split = check_split(split)
    for module in model.modules():
        if isinstance(module, GhostBatchNorm):
            module.ghost_batch_size = ghost
            module.split = split
    return _replace(model, _TO_GHOST, ghost_batch_size=ghost, split=split)


def convert_to_batch_norm(model: nn.Module) -> nn.Module:
    """Turn every Ghost BatchNorm layer back into plain BatchNorm (for inference/export).

    The inverse of `convert_to_ghost_bn`; state is shared the same way. In eval mode the
    two are the same function, so this only removes the dependency on this module.
    """
    return _replace(model, _TO_PLAIN)
