"""How a trial trains where the protocols differ: ours ("clean") or the authors' code
(github.com/eladhoffer/bigBatch), in one object each, so the engine's step reads the same
under both. The authors' differences the engine needs: ghost batches split with
`.chunk(B // ghost)`, the loss as the mean of each chunk's mean (`main_gbn.py`), momentum
emptied every epoch (their `adjust_optimizer` builds a new SGD), and the weight distance of
the first parameter only (as their code logs it). Their input pipeline is
`tunegap.data.protocols`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunegap.config import TrialConfig
from tunegap.optim import reset_momentum


class CleanProtocol:
    """tunegap's own training: ghosts of one size, the batch-mean loss, momentum kept."""

    name = "clean"
    # How `convert_to_ghost_bn` splits a batch into ghosts (`tunegap.gbn.SPLITS`).
    ghost_split = "fixed"

    def start_epoch(self, optimizer: torch.optim.Optimizer) -> None:
        """What happens to the optimizer before each epoch (nothing)."""

    def distance_pairs(self, pairs: Sequence[tuple[Any, Any]]) -> Sequence[tuple[Any, Any]]:
        """The (parameter, initial value) pairs the weight distance sums over: all."""
        return pairs

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, ghost: int | None,
             label_smoothing: float) -> torch.Tensor:
        """The training loss: cross entropy, the batch mean."""
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


class AuthorsProtocol(CleanProtocol):
    """The authors' code, where it differs (see the module)."""

    name = "authors"
    ghost_split = "chunk"

    def start_epoch(self, optimizer: torch.optim.Optimizer) -> None:
        reset_momentum(optimizer)

    def distance_pairs(self, pairs: Sequence[tuple[Any, Any]]) -> Sequence[tuple[Any, Any]]:
        return pairs[:1]

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, ghost: int | None,
             label_smoothing: float) -> torch.Tensor:
        # Chunks of unequal size then weigh alike, as main_gbn.py accumulates them.
        if ghost is None or y.shape[0] <= ghost:
            return super().loss(logits, y, ghost=ghost, label_smoothing=label_smoothing)
        chunks = max(1, y.shape[0] // ghost)
        losses = [F.cross_entropy(part, target, label_smoothing=label_smoothing)
                  for part, target in zip(logits.chunk(chunks), y.chunk(chunks), strict=True)]
        return torch.stack(losses).mean()


def training_protocol(config: TrialConfig) -> CleanProtocol:
    """The protocol object of a trial's `protocol` setting."""
    return AuthorsProtocol() if config.authors else CleanProtocol()
