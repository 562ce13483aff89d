"""The paper's networks: shapes, parameter counts, the registry, Ghost BatchNorm conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunegap.gbn import GhostBatchNorm
from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models import MODELS, build_model

# name -> (num_classes, input shape, batch, parameter count derived in the model's docstring)
CASES = {
    "f1": (10, (1, 28, 28), 4, 1_462_794),
    "c1": (10, (3, 32, 32), 4, 1_388_490),
    "c3": (100, (3, 32, 32), 4, 1_405_860),
    "resnet44": (10, (3, 32, 32), 4, 661_338),
    "vgg": (10, (3, 32, 32), 4, 33_646_666),
    "wrn16_4": (100, (3, 32, 32), 4, 2_800_804),
    "alexnet": (1000, (3, 224, 224), 2, 61_110_184),
}

_BUILT: dict[str, nn.Module] = {}


def built(name: str) -> nn.Module:
    """Each model built once per test session (AlexNet and VGG take a moment to initialize)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = build_model(name, num_classes=CASES[name][0])
    return _BUILT[name]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_shape_and_backward_on_a_tiny_batch(name):
    classes, shape, batch, _ = CASES[name]
    model = built(name).train()
    x = torch.randn(batch, *shape)
    out = model(x)
    assert out.shape == (batch, classes)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_count_is_the_documented_one(name):
    assert count(built(name)) == CASES[name][3]


def test_parameter_counts_against_published_values():
    # He et al. 2016 Table 6: ResNet-44 0.66M (option A shortcuts; the authors' code uses
    # 1x1 conv shortcuts, 2,752 more). Zagoruyko & Komodakis 2016: WRN-16-4 2.7M (the
    # authors' variant has a 64-channel stem: 2.80M).
    assert count(built("resnet44")) == pytest.approx(0.66e6, rel=0.01)
    assert count(built("wrn16_4")) == pytest.approx(2.7e6, rel=0.04)
    # The 1x1 shortcut conv + BN at the two stage changes (16->32, 32->64) are the difference.
    assert count(built("resnet44")) - (16 * 32 + 32 * 64 + 2 * (32 + 64)) == 658_586


def test_cifar100_heads_differ_only_in_the_last_layer():
    assert count(build_model("resnet44", num_classes=100)) - count(built("resnet44")) == 90 * 65
    assert count(built("c3")) - count(build_model("c1", num_classes=10)) == 90 * 193


@pytest.mark.parametrize("name", sorted(CASES))
def test_ghost_batch_norm_conversion_swaps_every_batch_norm(name):
    classes, shape, batch, _ = CASES[name]
    torch.manual_seed(1)
    model = build_model(name, num_classes=classes) if name != "alexnet" else built(name)
    plain = batch_norms(model)
    assert plain, f"{name} has no BatchNorm for Ghost BatchNorm to act on"
    x = torch.randn(batch, *shape)
    model.eval()
    with torch.no_grad():
        before = model(x)
    # Two ghost batches of 2 (AlexNet's batch of 2 is one ghost batch: a ghost batch of 1
    # sample cannot be normalized by its BatchNorm1d layers).
    ghost = 2
    converted = convert_to_ghost_bn(model, ghost)
    ghosts = [m for m in converted.modules() if isinstance(m, GhostBatchNorm)]
    assert len(ghosts) == len(plain) and not batch_norms(converted)
    assert all(g.ghost_batch_size == ghost for g in ghosts)
    with torch.no_grad():
        assert torch.allclose(converted(x), before, atol=1e-5)  # same function in eval mode
        converted.train()
        assert torch.isfinite(converted(x)).all()
    if name == "alexnet":  # the shared instance: give it plain BatchNorm back
        from tunegap.gbn_convert import convert_to_batch_norm

        _BUILT[name] = convert_to_batch_norm(converted)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet45'") as err:
        build_model("resnet45", num_classes=10)
    for name in CASES:
        assert name in str(err.value)


def test_every_table1_model_is_registered():
    assert set(CASES) <= set(MODELS)


def test_resnet_family_and_vgg_refuse_bad_depths():
    assert count(build_model("cifar_resnet", depth=20)) == 269_722 + 2_752  # He et al.: 0.27M
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_model("cifar_resnet", depth=45)
    with pytest.raises(ValueError, match="VGG depth 15"):
        build_model("vgg", depth=15)


def test_resnet_init_follows_the_authors_code():
    model = built("resnet44")
    conv = model.layer3[0].conv2
    fan_out = 3 * 3 * conv.out_channels
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
