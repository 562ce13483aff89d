"""Optimizers by name (tunegap.optim): parameter groups without decay, LARS against its
formula computed by hand, weight-decay changes, momentum resets, state round trips."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models import build_model
from tunegap.optim import (
    LARS,
    build_optimizer,
    reset_momentum,
    set_weight_decay,
    split_decay_params,
)

# lr per optimizer that makes visible progress on a fixed batch in a few steps; LARS's trust
# coefficient (0.001) scales its step down by ~||w||/||g|| * 1e-3, hence its large lr.
BUILT_IN = ("sgd", "nesterov", "adam", "adamw", "lars")
LRS = {"sgd": 0.05, "nesterov": 0.05, "adam": 3e-3, "adamw": 3e-3, "lars": 20.0}


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn1d", num_classes=10, channels=8)


def fixed_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 40, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def ids(params) -> set[int]:
    return {id(p) for p in params}


# --- LARS against the formula -------------------------------------------------------------


def test_lars_trust_ratio_and_update_match_the_formula_by_hand():
    net = tiny_net()
    lr, wd, tc = 0.5, 0.01, 0.02
    opt = LARS(
        [
            {"params": [net[0].weight, net[3].weight], "no_decay": False},
            {"params": [net[0].bias, net[1].weight, net[1].bias, net[3].bias],
             "weight_decay": 0.0, "no_decay": True},
        ],
        lr=lr, momentum=0.0, weight_decay=wd, trust_coefficient=tc,
    )
    x = torch.randn(16, 6)
    F.cross_entropy(net(x), torch.randint(0, 3, (16,))).backward()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    opt.step()

    for name in ("0.weight", "3.weight"):
        w, g = before[name], grads[name]
        ratio = tc * w.norm() / (g.norm() + wd * w.norm())
        p = net.get_parameter(name)
        assert torch.allclose(opt.state[p]["trust_ratio"], ratio, rtol=1e-6)
        assert torch.allclose(p.detach(), w - lr * ratio * (g + wd * w), rtol=1e-6, atol=1e-8)
        assert not torch.allclose(ratio, torch.tensor(1.0))
    # Bias and BatchNorm parameters: plain lr * g, no ratio, no decay (wd would show here
    # since the BN weights are 1, far from 0).
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):
        p = net.get_parameter(name)
        assert torch.allclose(p.detach(), before[name] - lr * grads[name], atol=1e-7), name
        assert "trust_ratio" not in opt.state[p]


def test_lars_momentum_accumulates_the_scaled_step():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    opt = LARS([w], lr=1.0, momentum=0.5, weight_decay=0.0, trust_coefficient=0.1, eps=0.0)
    w.grad = torch.tensor([0.0, 2.0])  # ||g|| = 2: ratio 0.1 * 5 / 2 = 0.25
    opt.step()
    v1 = torch.tensor([0.0, 0.5])
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.5]))
    assert torch.allclose(opt.state[w]["momentum_buffer"], v1)
    ratio2 = 0.1 * torch.tensor([3.0, 3.5]).norm() / 2.0
    opt.step()
    v2 = 0.5 * v1 + ratio2 * torch.tensor([0.0, 2.0])
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.5]) - v2)


def test_lars_ratio_is_one_where_a_norm_is_zero():
    w = nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.ones(3)
    opt.step()
    assert opt.state[w]["trust_ratio"].item() == 1.0
    assert torch.allclose(w.detach(), torch.full((3,), -0.1))


def test_lars_state_dict_round_trips_with_weights_only():
    x, y = fixed_batch()
    net = cnn()
    opt = build_optimizer(net, "lars", lr=1.0, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    twin = cnn()
    twin.load_state_dict(loaded["model"])
    twin_opt = build_optimizer(twin, "lars", lr=0.0, momentum=0.0, weight_decay=0.0)
    twin_opt.load_state_dict(loaded["optimizer"])
    assert [g["no_decay"] for g in twin_opt.param_groups] == [False, True]
    assert twin_opt.param_groups[0]["lr"] == 1.0
    for model, o in ((net, opt), (twin, twin_opt)):
        o.zero_grad()
        F.cross_entropy(model(x), y).backward()
        o.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


# --- parameter groups and weight decay ----------------------------------------------------


def test_no_decay_groups_hold_norm_params_and_biases():
    net = convert_to_ghost_bn(cnn(), 16)  # Ghost BN params count as BatchNorm's
    opt = build_optimizer(net, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                          no_decay_bn_bias=True)
    decayed, excluded = opt.param_groups
    norm_params = [p for m in net.modules() if isinstance(m, nn.BatchNorm1d)
                   for p in m.parameters()]
    assert len(norm_params) == 6
    assert ids(excluded["params"]) == ids([*norm_params, net.classifier.bias])
    assert excluded["weight_decay"] == 0.0 and excluded["no_decay"] is True
    assert decayed["weight_decay"] == 5e-4 and decayed["no_decay"] is False
    assert ids(decayed["params"]) == ids(
        [net.features[i].weight for i in (0, 3, 6)] + [net.classifier.weight])


def test_without_the_flag_everything_decays_except_under_lars():
    net = cnn()
    opt = build_optimizer(net, "adamw", lr=1e-3, momentum=0.9, weight_decay=0.05)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert ids(opt.param_groups[0]["params"]) == ids(net.parameters())
    lars = build_optimizer(net, "lars", lr=1.0, momentum=0.9, weight_decay=0.05)
    assert [(g["no_decay"], g["weight_decay"]) for g in lars.param_groups] == [
        (False, 0.05), (True, 0.0)]


def test_group_norm_layer_norm_and_shared_params():
    lin = nn.Linear(4, 4, bias=False)
    net = nn.Sequential(lin, nn.GroupNorm(2, 4), nn.LayerNorm(4), lin)
    decay, no_decay = split_decay_params(net)
    assert ids(decay) == {id(lin.weight)} and len(decay) == 1
    assert len(no_decay) == 4


def test_empty_group_is_left_out():
    net = nn.Sequential(nn.Linear(3, 3, bias=False))
    opt = build_optimizer(net, "sgd", lr=0.1, momentum=0.0, weight_decay=1e-4,
                          no_decay_bn_bias=True)
    assert [g["no_decay"] for g in opt.param_groups] == [False]


def test_weight_decay_acts_only_on_the_decayed_group_and_set_weight_decay_keeps_it_so():
    net = cnn()
    opt = build_optimizer(net, "sgd", lr=1.0, momentum=0.0, weight_decay=0.1,
                          no_decay_bn_bias=True)
    set_weight_decay(opt, 0.2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only weight decay moves anything
    for name, p in net.named_parameters():
        if name.endswith("bias") or name.startswith(("features.1", "features.4", "features.7")):
            assert torch.equal(p, before[name]), name
        else:
            assert torch.allclose(p, before[name] * 0.8), name


def test_set_weight_decay_on_a_plain_optimizer_and_bad_values():
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1, weight_decay=0.0)
    set_weight_decay(opt, 1e-3)
    assert opt.param_groups[0]["weight_decay"] == 1e-3
    with pytest.raises(ValueError, match=r"^weight_decay -1 is not allowed: use a finite"):
        set_weight_decay(opt, -1)


# --- every optimizer trains ---------------------------------------------------------------


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("no_decay", [False, True])
def test_each_optimizer_reduces_the_loss_on_a_fixed_batch(name, no_decay):
    x, y = fixed_batch()
    net = cnn()
    opt = build_optimizer(net, name, lr=LRS[name], momentum=0.9, weight_decay=5e-4,
                          no_decay_bn_bias=no_decay)
    expected = {"sgd": torch.optim.SGD, "nesterov": torch.optim.SGD, "adam": torch.optim.Adam,
                "adamw": torch.optim.AdamW, "lars": LARS}[name]
    assert type(opt) is expected
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_optimizer_specific_settings():
    net = cnn()
    nesterov = build_optimizer(net, "nesterov", lr=0.1, momentum=0.9, weight_decay=0.0)
    assert nesterov.param_groups[0]["nesterov"] is True
    sgd = build_optimizer(net, "sgd", lr=0.1, momentum=0.5, weight_decay=0.0)
    assert sgd.param_groups[0]["nesterov"] is False and sgd.param_groups[0]["momentum"] == 0.5
    adam = build_optimizer(net, "adam", lr=1e-3, momentum=0.8, weight_decay=1e-4)
    assert adam.param_groups[0]["betas"] == (0.8, 0.999)
    assert adam.param_groups[0]["weight_decay"] == 1e-4
    lars = build_optimizer(net, "lars", lr=1.0, momentum=0.9, weight_decay=0.0)
    assert lars.param_groups[0]["trust_coefficient"] == 0.001
    assert lars.param_groups[0]["eps"] == 1e-9


def test_bad_names_and_values_get_one_line():
    net = cnn()
    kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    with pytest.raises(ValueError) as err:
        build_optimizer(net, "rmsprop", **kw)
    assert str(err.value) == "unknown optimizer 'rmsprop': use one of adam, adamw, lars, nesterov, sgd"
    with pytest.raises(ValueError, match=r"^momentum 0 is not allowed with optimizer nesterov"):
        build_optimizer(net, "nesterov", lr=0.1, momentum=0.0, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"^momentum 1.0 is not allowed: use .* < 1"):
        build_optimizer(net, "adam", lr=0.1, momentum=1.0, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"^lr nan is not allowed"):
        build_optimizer(net, "sgd", lr=float("nan"), momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"^weight_decay -0.1 is not allowed"):
        build_optimizer(net, "lars", lr=0.1, momentum=0.9, weight_decay=-0.1)


# --- momentum reset -----------------------------------------------------------------------


def _grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    for p in net.parameters():
        p.grad = None
    F.cross_entropy(net(x), y).backward()


@pytest.mark.parametrize("name", ["sgd", "nesterov", "lars"])
def test_reset_momentum_makes_the_next_step_a_fresh_optimizers(name):
    x, y = fixed_batch()
    net = cnn()
    opt = build_optimizer(net, name, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        _grads(net, x, y)
        opt.step()
    assert opt.state and all("momentum_buffer" in s for s in opt.state.values())
    reset_momentum(opt)
    assert len(opt.state) == 0

    twin = copy.deepcopy(net)
    fresh = build_optimizer(twin, name, lr=0.05, momentum=0.9, weight_decay=5e-4)
    _grads(net, x, y)
    _grads(twin, x, y)
    opt.step()
    fresh.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reset_momentum_differs_from_keeping_it():
    # The check above could pass if momentum did nothing; here it must change the step.
    x, y = fixed_batch()
    nets = [cnn(), cnn()]
    opts = [build_optimizer(n, "sgd", lr=0.05, momentum=0.9, weight_decay=0.0) for n in nets]
    for _ in range(2):
        for n, o in zip(nets, opts, strict=True):
            _grads(n, x, y)
            o.step()
    reset_momentum(opts[1])
    for n, o in zip(nets, opts, strict=True):
        _grads(n, x, y)
        o.step()
    assert not torch.equal(nets[0].classifier.weight, nets[1].classifier.weight)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_reset_momentum_clears_adam_moments(name):
    x, y = fixed_batch()
    net = cnn()
    opt = build_optimizer(net, name, lr=1e-3, momentum=0.9, weight_decay=1e-2)
    _grads(net, x, y)
    opt.step()
    assert all("exp_avg" in s for s in opt.state.values())
    reset_momentum(opt)
    assert len(opt.state) == 0
    _grads(net, x, y)
    opt.step()
    assert all(s["step"].item() == 1 for s in opt.state.values())
