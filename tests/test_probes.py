import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models.cnn1d import CNN1d
from tunegap.probes import (
    NoiseScaleEstimator,
    grad_norm_sq,
    noise_scale_from_step,
    small_batch_size,
    top_hessian_eigenvalue,
)

# ------------------------------------------------------------------------------ helpers


class LinearGradient(nn.Module):
    """loss_i = w · x_i, so the per-sample gradient is exactly x_i = G + ε_i."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def mean_output(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


def small_net(*, dropout: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = CNN1d(channels=8)
    if dropout:
        model.classifier = nn.Sequential(nn.Dropout(0.5), model.classifier)
    return model


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def snapshot(model: nn.Module) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_same(before: dict, after: dict) -> None:
    for a, b in zip(before["params"], after["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(before["buffers"], after["buffers"], strict=True):
        assert torch.equal(a, b)
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])


def full_grad_sq(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    F.cross_entropy(m(x), y).backward()
    return float(sum(p.grad.pow(2).sum() for p in m.parameters() if p.grad is not None))


# ------------------------------------------------------------------------- noise scale


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_estimator_is_exact_on_expected_norms(ema_decay):
    # E|G_B|² = |G|² + tr(Σ)/B: feeding expectations must give tr(Σ)/|G|² exactly, also
    # when measurements come at different batch sizes (a smaller last batch).
    g_sq, trace = 1.5, 96.0
    est = NoiseScaleEstimator(ema_decay=ema_decay)
    for bs, bb in [(32, 256), (16, 128), (8, 100)]:
        est.add(g_sq + trace / bs, g_sq + trace / bb, bs, bb)
    assert est.count == 3
    assert est.g_sq() == pytest.approx(g_sq, rel=1e-12)
    assert est.trace_sigma() == pytest.approx(trace, rel=1e-12)
    assert est.value() == pytest.approx(trace / g_sq, rel=1e-12)


def test_estimator_averages_before_dividing():
    # Two measurements whose |G|² estimates are 0.5 and 1.5 (mean 1) and tr(Σ) 10 and 30
    # (mean 20): the ratio of means is 20; the mean of ratios would be 15.
    est = NoiseScaleEstimator()
    for g_sq, trace in [(0.5, 10.0), (1.5, 30.0)]:
        est.add(g_sq + trace / 4, g_sq + trace / 16, 4, 16)
    assert est.value() == pytest.approx(20.0)


def test_estimator_nan_reset_validation_and_state():
    est = NoiseScaleEstimator()
    assert math.isnan(est.value()) and math.isnan(est.g_sq()) and math.isnan(est.trace_sigma())
    est.add(1.0, 2.0, 4, 16)  # |G|² estimate (32 - 4) / 12 > 0 but trace negative
    assert est.value() < 0
    est.reset()
    est.add(5.0, 0.1, 4, 16)  # |G|² estimate (1.6 - 20) / 12 < 0: noise dominates
    assert est.g_sq() < 0 and math.isnan(est.value())
    with pytest.raises(ValueError, match="b_small < b_big"):
        est.add(1.0, 1.0, 16, 16)
    with pytest.raises(ValueError, match="ema_decay"):
        NoiseScaleEstimator(ema_decay=1.0)

    est = NoiseScaleEstimator(ema_decay=0.5)
    est.add(torch.tensor(3.0), torch.tensor(1.25), 32, 256)  # tensors are accepted
    est.add(2.0, 1.1, 32, 256)
    restored = NoiseScaleEstimator(ema_decay=0.5)
    restored.load_state_dict(est.state_dict())
    assert restored.value() == pytest.approx(est.value())
    est.add(2.5, 1.2, 32, 256)
    restored.add(2.5, 1.2, 32, 256)
    assert restored.value() == pytest.approx(est.value())
    with pytest.raises(ValueError, match="ema_decay"):
        NoiseScaleEstimator().load_state_dict(est.state_dict())


def test_small_batch_size():
    assert small_batch_size(2048) == 256
    assert small_batch_size(2048, multiple_of=100) == 300
    assert small_batch_size(16) == 2
    assert small_batch_size(3) == 2
    assert small_batch_size(2) is None
    assert small_batch_size(1) is None
    assert small_batch_size(32, multiple_of=32) is None
    assert small_batch_size(256, small_fraction=0.5, multiple_of=32) == 128
    with pytest.raises(ValueError):
        small_batch_size(64, small_fraction=1.0)


@pytest.mark.parametrize("ema_decay", [None, 0.998])
def test_noise_scale_recovered_on_known_noise(ema_decay):
    # Per-sample gradients G + ε_i with ε ~ N(0, diag(s²)): B_simple = Σ s² / |G|² = 40.
    dim, b_big, n_steps = 32, 256, 500
    gen = torch.Generator().manual_seed(0)
    true_g = torch.randn(dim, generator=gen, dtype=torch.float64)
    true_g /= true_g.norm()
    std = torch.linspace(0.5, 1.5, dim, dtype=torch.float64)
    std *= math.sqrt(40.0 / float(std.pow(2).sum()))
    expected = float(std.pow(2).sum()) / float(true_g.pow(2).sum())
    assert expected == pytest.approx(40.0)

    model = LinearGradient(dim)
    est = NoiseScaleEstimator(ema_decay=ema_decay)
    y = torch.zeros(b_big)
    for _ in range(n_steps):
        x = true_g + std * torch.randn(b_big, dim, generator=gen, dtype=torch.float64)
        # The mean-loss gradient of this model over a batch is exactly its mean row.
        g_big_sq = x.mean(0).pow(2).sum()
        norms = noise_scale_from_step(model, mean_output, x, y, g_big_sq=g_big_sq)
        assert (norms.b_small, norms.b_big) == (32, 256)
        assert float(norms.g_small_sq) == pytest.approx(float(x[:32].mean(0).pow(2).sum()))
        est.add(*norms)
    assert est.value() == pytest.approx(expected, rel=0.10)
    assert est.g_sq() == pytest.approx(1.0, rel=0.10)
    assert est.trace_sigma() == pytest.approx(40.0, rel=0.10)
    assert model.w.grad is None  # autograd.grad never wrote .grad


def test_noise_scale_from_step_is_exact_and_leaves_no_trace():
    x, y = batch(64)
    for dropout in (True, False):
        model = small_net(dropout=dropout).train()
        # Something in .grad that must survive, and a non-trivial state of the buffers.
        F.cross_entropy(model(x), y).backward()
        model.features[1].eval()  # a mixed set of modes must come back as it was
        before = snapshot(model)
        norms = noise_scale_from_step(model, F.cross_entropy, x, y, g_big_sq=2.5)
        assert_same(before, snapshot(model))  # running statistics and RNG restored
        assert (norms.b_small, norms.b_big) == (8, 64)
        assert float(norms.g_big_sq) == 2.5
    # Without dropout a pass is deterministic: the sub-batch norm is the exact one.
    assert float(norms.g_small_sq) == pytest.approx(full_grad_sq(model, x[:8], y[:8]), rel=1e-5)
    with pytest.raises(ValueError, match="too small"):
        noise_scale_from_step(model, F.cross_entropy, x[:2], y[:2], g_big_sq=1.0)


def test_noise_scale_from_step_reuses_the_step_gradient_and_keeps_the_trajectory():
    x, y = batch(64, seed=1)
    plain, probed = small_net().train(), small_net().train()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (plain, probed)]
    est = NoiseScaleEstimator()
    for step in range(3):
        xs, ys = x.roll(8 * step, 0), y.roll(8 * step, 0)
        for model, opt in zip((plain, probed), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs), ys).backward()
            if model is probed:
                total = nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # pre-clip norm
                grads = [p.grad.clone() for p in model.parameters()]
                norms = noise_scale_from_step(model, F.cross_entropy, xs, ys, g_big_sq=total**2)
                # The step's own pre-clip gradient is the full-batch one at these weights.
                assert float(norms.g_big_sq) == pytest.approx(
                    full_grad_sq(model, xs, ys), rel=1e-5
                )
                assert float(norms.g_small_sq) == pytest.approx(
                    full_grad_sq(model, xs[:8], ys[:8]), rel=1e-5
                )
                for g, p in zip(grads, model.parameters(), strict=True):
                    assert torch.equal(g, p.grad)
                est.add(*norms)
            else:
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
    # Probing changed nothing: the two models trained identically.
    for a, b in zip(plain.state_dict().values(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert est.count == 3 and math.isfinite(est.trace_sigma())


def test_grad_norm_sq_reads_grad_fields():
    model = small_net()
    x, y = batch(16)
    F.cross_entropy(model(x), y).backward()
    expected = sum(float(p.grad.pow(2).sum()) for p in model.parameters())
    assert float(grad_norm_sq(model)) == pytest.approx(expected, rel=1e-6)


def test_ghost_aligned_sub_batch_computes_the_same_per_sample_losses():
    # Under GBN a sub-batch of whole ghost batches has the same per-sample losses as inside
    # the big batch, so its gradient is the big batch's restricted to those samples.
    x, y = batch(64, seed=2)
    for ghost, should_match in [(8, True), (None, False)]:
        model = small_net().train()
        if ghost is not None:
            model = convert_to_ghost_bn(model, ghost)
        norms = noise_scale_from_step(
            model, F.cross_entropy, x, y, g_big_sq=0.0, multiple_of=ghost
        )
        assert norms.b_small == 8
        per_sample = F.cross_entropy(model(x), y, reduction="none")
        inside = sum(
            g.pow(2).sum()
            for g in torch.autograd.grad(per_sample[:8].mean(), list(model.parameters()))
        )
        matches = math.isclose(float(norms.g_small_sq), float(inside), rel_tol=1e-4)
        assert matches == should_match


# --------------------------------------------------------------------------- sharpness


class Quadratic(nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.ones(a.shape[0], dtype=a.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w


def test_top_eigenvalue_of_a_known_quadratic():
    gen = torch.Generator().manual_seed(3)
    spectrum = torch.tensor([10.0, 3.0, 1.0, 0.5, 0.25, 0.1, 0.0, 0.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    model = Quadratic(q @ torch.diag(spectrum) @ q.T)
    x, y = torch.zeros(4, 1), torch.zeros(4)
    value = top_hessian_eigenvalue(model, lambda out, y: out, x, y)
    assert value == pytest.approx(10.0, rel=0.01)
    assert model.w.grad is None and torch.equal(
        model.w.detach(), torch.ones(8, dtype=torch.float64)
    )
    # The second eigenvalue is 3, not 10: a sloppy iteration would not pass this.
    assert abs(top_hessian_eigenvalue(model, lambda out, y: out, x, y, iters=1) - 10.0) > 0.1


def test_top_eigenvalue_matches_the_exact_hessian_of_a_small_bn_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    model = model.double().train()
    x = torch.randn(32, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    model(x)  # move the running statistics away from their defaults (train mode)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = math.prod(shape)
            params[name] = flat[i : i + n].view(shape)
            i += n
        eval_model = copy.deepcopy(model).eval()
        return F.cross_entropy(torch.func.functional_call(eval_model, params, (x,)), y)

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat0))
    expected = float(eig[eig.abs().argmax()])
    before = snapshot(model)
    value = top_hessian_eigenvalue(model, F.cross_entropy, x, y, iters=200, tol=1e-9)
    assert_same(before, snapshot(model))
    assert value == pytest.approx(expected, rel=0.01)
    chunked = top_hessian_eigenvalue(
        model, F.cross_entropy, x, y, iters=200, tol=1e-9, chunk_size=10
    )
    assert chunked == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize("ghost", [None, 8])
def test_top_eigenvalue_on_a_conv_net_with_batchnorm(ghost):
    model = small_net()
    if ghost is not None:
        model = convert_to_ghost_bn(model, ghost)
    model.train()
    x, y = batch(64, seed=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    before = snapshot(model)
    value = top_hessian_eigenvalue(model, F.cross_entropy, x, y, iters=10)
    assert_same(before, snapshot(model))
    assert model.training
    assert math.isfinite(value) and value > 0
    # Deterministic in the weights and the seed (eval mode, seeded start vector).
    assert top_hessian_eigenvalue(model, F.cross_entropy, x, y, iters=10) == value
