"""BatchNorm weight inits and zero-init of residual branches (tunegap.models.init), on the
real tunegap models, plain and Ghost-BN-converted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunegap.gbn import GhostBatchNorm, GhostBatchNorm2d
from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models import MODELS, build_model
from tunegap.models.init import (
    BN_WEIGHT_INITS,
    RESIDUAL_MODELS,
    init_bn_weights,
    zero_init_residual,
)
from tunegap.models.resnet import BasicBlock


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn1d", num_classes=10, channels=16)


def bn_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --- init_bn_weights ----------------------------------------------------------------------


def test_uniform_is_in_0_1_varied_and_reproducible_per_seed():
    net = cnn()
    assert all(torch.equal(w, torch.ones_like(w)) for w in bn_weights(net))  # torch's default
    assert init_bn_weights(net, "uniform", seed=3) == 3
    first = bn_weights(net)
    for w in first:
        assert bool(((w > 0) & (w < 1)).all())
        assert w.std() > 0.1  # U(0,1) has std 0.29; not all equal
    assert not torch.equal(first[0], first[1])  # each layer its own draw

    other = cnn()
    init_bn_weights(other, "uniform", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, bn_weights(other), strict=True))
    init_bn_weights(other, "uniform", seed=4)
    assert not any(torch.equal(a, b) for a, b in zip(first, bn_weights(other), strict=True))


def test_one_resets_to_ones_and_leaves_biases_alone():
    net = cnn()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            nn.init.constant_(m.bias, 0.5)
    init_bn_weights(net, "uniform", seed=0)
    assert init_bn_weights(net, "one", seed=0) == 3
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.full_like(m.bias, 0.5))


def test_uniform_leaves_the_global_rng_alone():
    net = cnn()
    state = torch.random.get_rng_state()
    init_bn_weights(net, "uniform", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_uniform_on_a_ghost_bn_model_matches_the_plain_model():
    plain, ghost = cnn(), convert_to_ghost_bn(cnn(), 8)
    assert sum(isinstance(m, GhostBatchNorm) for m in ghost.modules()) == 3
    assert init_bn_weights(ghost, "uniform", seed=7) == 3
    init_bn_weights(plain, "uniform", seed=7)
    assert all(torch.equal(a, b)
               for a, b in zip(bn_weights(plain), bn_weights(ghost), strict=True))
    assert ghost(torch.randn(32, 1, 40)).shape == (32, 10)  # still trains after the init


def test_non_affine_bn_is_skipped():
    net = nn.Sequential(nn.BatchNorm1d(4, affine=False), nn.BatchNorm1d(4))
    assert init_bn_weights(net, "uniform", seed=0) == 1


def test_unknown_mode_is_one_line():
    assert BN_WEIGHT_INITS == ("one", "uniform")
    with pytest.raises(ValueError) as err:
        init_bn_weights(cnn(), "normal", seed=0)
    assert str(err.value) == "bn_weight_init 'normal' is not allowed: use one of one, uniform"


# --- zero_init_residual -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "blocks"),
    [
        ("cifar_resnet", {"depth": 8}, 3),
        ("cifar_resnet", {"depth": 14, "width": 2}, 6),
        ("wrn16_4", {}, 6),
    ],
)
def test_zero_init_residual_zeroes_exactly_one_bn_per_block(name, kwargs, blocks):
    torch.manual_seed(0)
    net = build_model(name, num_classes=10, **kwargs)
    n_bn = len(bn_weights(net))
    assert zero_init_residual(net) == blocks
    zeroed = [m for m in net.modules()
              if isinstance(m, nn.BatchNorm2d) and not m.weight.any()]
    assert len(zeroed) == blocks
    assert {id(m) for m in zeroed} == {
        id(b.bn2) for b in net.modules() if isinstance(b, BasicBlock)}
    others = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and m.weight.any()]
    assert len(others) == n_bn - blocks  # the others untouched (still 1)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in others)


def test_zeroed_block_is_relu_of_its_shortcut():
    torch.manual_seed(0)
    net = build_model("cifar_resnet", depth=8, num_classes=10)
    zero_init_residual(net)
    net.eval()
    for block in (net.layer1[0], net.layer2[0]):  # identity and conv shortcut
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        with torch.no_grad():
            assert torch.allclose(block(x), torch.relu(block.shortcut(x)))


@pytest.mark.parametrize("order", ["before", "after"])
def test_zero_init_residual_with_ghost_bn_either_order(order):
    torch.manual_seed(0)
    net = build_model("cifar_resnet", depth=8, num_classes=10)
    if order == "before":
        zero_init_residual(net)
        net = convert_to_ghost_bn(net, 4)
    else:
        net = convert_to_ghost_bn(net, 4)
        assert zero_init_residual(net) == 3
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock)]
    assert all(isinstance(b.bn2, GhostBatchNorm2d) and not b.bn2.weight.any() for b in blocks)
    assert all(b.bn1.weight.all() for b in blocks)
    net(torch.randn(8, 3, 16, 16)).sum().backward()  # trains: bn2's weight gets a gradient
    assert all(b.bn2.weight.grad is not None and b.bn2.weight.grad.any() for b in blocks)


def test_uniform_then_zero_init_keeps_both():
    torch.manual_seed(0)
    net = build_model("cifar_resnet", depth=8, num_classes=10)
    init_bn_weights(net, "uniform", seed=0)
    zero_init_residual(net)
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock)]
    assert all(not b.bn2.weight.any() for b in blocks)
    assert all(bool(((b.bn1.weight > 0) & (b.bn1.weight < 1)).all()) for b in blocks)


def test_zero_init_residual_refuses_models_without_blocks():
    with pytest.raises(ValueError) as err:
        zero_init_residual(cnn())
    assert str(err.value) == (
        "zero_init_residual needs a model with residual blocks (resnet, wrn): CNN1d has none")
    with pytest.raises(ValueError, match=r"F1 has none$"):
        zero_init_residual(build_model("f1", num_classes=10))


def test_residual_models_are_registered_and_residual():
    assert set(RESIDUAL_MODELS) <= set(MODELS.names())
    for name in RESIDUAL_MODELS:
        net = build_model(name, num_classes=10)
        assert any(isinstance(m, BasicBlock) for m in net.modules()), name
