"""The fast path's promise, checked without a GPU: a training step never reads a value back.

On CUDA a value read (``.item()``, ``float(t)``, ``bool(t)``, ``torch.equal``) or an op
whose output size depends on the data (``nonzero``, boolean indexing, ``repeat_interleave``
with tensor counts) makes the host wait for the device. These pass through ATen as the ops
recorded below, so recording ATen calls on the CPU finds them. It is a proxy, not CUDA's
sync-debug mode (tests/test_gpu.py has that check, for where a GPU exists): a copy to the
host (``.cpu()``, ``.tolist()``) is no op at all on a CPU tensor and goes unseen here.
"""

from __future__ import annotations

import pytest
import torch
from fake_data import fake_cifar
from torch.utils._python_dispatch import TorchDispatchMode

from tunegap import gbn
from tunegap.config import TrialConfig
from tunegap.engine import Engine

aten = torch.ops.aten
READS_BACK = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.equal.default,
    aten.repeat_interleave.Tensor,
}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
            aten._index_put_impl_.default}


class HostReads(TorchDispatchMode):
    """Records every ATen call that would make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func in INDEXING and any(
            t is not None and t.dtype == torch.bool for t in args[1]
        )
        if func in READS_BACK or boolean_index:
            self.calls.append(str(func))
        return func(*args, **kwargs)


def engine_for(workload: str, data_dir, batch_size: int, **kw) -> Engine:
    config = TrialConfig(workload=workload, batch_size=batch_size, ghost_batch_size=16,
                         epochs=2, device="cpu", data_dir=str(data_dir), **kw)
    return Engine(config, data=fake_cifar() if workload.startswith("cifar") else None)


def _set_where(x: torch.Tensor) -> None:
    x[x > 4] = 0.0


@pytest.mark.parametrize(
    "read",
    [
        lambda x: float(x.sum()),
        lambda x: x[x > 2],
        torch.nonzero,
        _set_where,
        lambda x: torch.equal(x, x),
        lambda x: torch.repeat_interleave(x, torch.ones(6, dtype=torch.long)),
    ],
    ids=["float", "boolean-index", "nonzero", "boolean-assign", "equal", "repeat-interleave"],
)
def test_the_recorder_sees_each_kind_of_read(read):
    x = torch.arange(6.0)
    with HostReads() as reads:
        read(x)
    assert len(reads.calls) == 1, reads.calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("workload", ["mnist1d-cnn", "cifar10-c1"])
def test_batches_and_steps_read_nothing_back(workload, precision, data_dir, monkeypatch):
    # mnist1d-cnn clips gradients every step; cifar10-c1 crops and flips every batch. bf16
    # is autocast with Ghost BatchNorm keeping bf16 activations, as on CUDA.
    monkeypatch.setattr(gbn, "KEEP_BF16", True)
    engine = engine_for(workload, data_dir, batch_size=64, precision=precision)
    assert engine.use_bf16 == (precision == "bf16")
    if workload == "mnist1d-cnn":
        assert engine.resolved.clip_norm is not None
    else:
        assert engine.loader.augment is not None
    engine.model.train()
    with HostReads() as reads:
        for i, (x, y) in enumerate(engine.loader):
            engine.train_step(x, y, lr=0.01, step=i)
            if i == 7:
                break
    assert reads.calls == []


def test_an_epoch_reads_back_the_same_few_values_however_many_steps_it_takes(data_dir):
    counts = []
    for batch_size in (2000, 250):  # 4 and 32 steps per epoch
        engine = engine_for("mnist1d-cnn", data_dir, batch_size=batch_size)
        with HostReads() as reads:
            engine.train_epoch()
        counts.append(len(reads.calls))
    assert counts[0] == counts[1] and counts[0] <= 8, counts
