"""GPU-only checks. CI has no GPU, so these skip there; run them where CUDA exists."""

from __future__ import annotations

import copy

import pytest
import torch
from fake_data import fake_cifar
from torch import nn

from tunegap.config import TrialConfig
from tunegap.engine import Engine
from tunegap.gbn_convert import convert_to_ghost_bn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_engine_on_cuda_uses_bf16_and_trains(data_dir):
    engine = Engine(TrialConfig(workload="mnist1d-cnn", batch_size=1024, ghost_batch_size=32,
                                epochs=2, device="cuda", data_dir=str(data_dir)))
    assert engine.use_bf16 and engine.device.type == "cuda"
    last = engine.run()[-1]
    assert last["test_acc"] > 30 and not engine.diverged


def test_ghost_batchnorm_on_cuda_matches_the_chunked_reference():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16).cuda()
    ghost = convert_to_ghost_bn(nn.Sequential(copy.deepcopy(bn)), 32)[0]
    x = torch.randn(256, 16, 8, 8, device="cuda", requires_grad=True)
    out = ghost(x)
    ref = torch.cat([bn(chunk) for chunk in torch.split(x, 32)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ghost.running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ghost.running_var, bn.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep", [True, False], ids=["bf16-kept", "bf16-copied"])
def test_ghost_batchnorm_under_bf16_autocast_on_cuda_matches_the_chunked_reference(
    keep, monkeypatch
):
    # CUDA casts mixed bf16/fp32 operands inside its kernels, a path the CPU tests never take.
    from tunegap import gbn as gbn_module

    monkeypatch.setattr(gbn_module, "KEEP_BF16", keep)
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16).cuda()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ghost = convert_to_ghost_bn(nn.Sequential(copy.deepcopy(bn)), 32)[0]
    x = (torch.randn(200, 16, 8, 8, device="cuda") * 2 + 1).bfloat16()  # last ghost: 8
    x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(x.shape, device="cuda").bfloat16()
    results = []
    for module, forward in ((bn, lambda t: torch.cat([bn(c) for c in torch.split(t, 32)])),
                            (ghost, ghost)):
        inp = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = forward(inp)
        out.backward(dy)
        results.append((out.float(), inp.grad.float(), module.weight.grad, module.bias.grad,
                        module.running_mean, module.running_var))
    for ref, got in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    for ref, got in zip(results[0][2:], results[1][2:], strict=True):  # fp32 results
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_2d_workload_on_cuda_is_resident_channels_last_bf16_with_ghost_bn():
    config = TrialConfig(
        workload="cifar10-c1", batch_size=64, ghost_batch_size=16, epochs=1, device="cuda"
    )
    engine = Engine(config, data=fake_cifar())
    assert engine.use_bf16 and engine.channels_last and torch.backends.cudnn.benchmark
    assert engine.data.x_train.is_cuda and engine.loader.x.is_cuda
    assert engine.data.x_train.is_contiguous(memory_format=torch.channels_last)
    x, y = next(iter(engine.loader))
    assert x.is_cuda and y.is_cuda and x.shape == (64, 3, 32, 32)
    metrics = engine.train_epoch()
    assert metrics["updates"] == 4 and not engine.diverged


def test_training_steps_never_wait_for_the_gpu():
    # The fast path reads metrics once per epoch: inside the steps nothing may synchronize
    # the host with the device (torch raises on a synchronizing call in "error" mode).
    config = TrialConfig(
        workload="cifar10-c1", batch_size=64, ghost_batch_size=16, epochs=1, device="cuda"
    )
    engine = Engine(config, data=fake_cifar())
    batches = list(engine.loader)  # the once-per-epoch shuffle copy happens here
    engine.model.train()
    engine.train_step(*batches[0], lr=0.01, step=0)  # first step: lazy init, autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(batches[1:], start=1):
            engine.train_step(x, y, lr=0.01, step=i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
