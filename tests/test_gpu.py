"""GPU-only checks. CI has no GPU, so these skip there; run them where CUDA exists."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tunegap.config import TrialConfig
from tunegap.gbn import convert_to_ghost_bn
from tunegap.train import Engine

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
