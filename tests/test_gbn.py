"""Ghost BatchNorm against the authors' chunked method (and plain BatchNorm where they agree).

The reference: split the batch (`torch.split` into fixed-size ghosts for the default
split="fixed"; `torch.chunk(B // ghost)` as github.com/eladhoffer/bigBatch main_gbn.py does,
for split="chunk") and run each chunk through a plain BatchNorm in order, so each chunk is
normalized with its own statistics and updates the running statistics in turn.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from tunegap import gbn as gbn_module
from tunegap.gbn import GhostBatchNorm, GhostBatchNorm1d, GhostBatchNorm2d
from tunegap.gbn_convert import convert_to_batch_norm, convert_to_ghost_bn

C = 5


def chunked_reference(bn: nn.Module, x: Tensor, ghost_batch_size: int) -> Tensor:
    """The authors' Ghost BatchNorm: plain BatchNorm applied chunk by chunk."""
    return torch.cat([bn(chunk) for chunk in torch.split(x, ghost_batch_size)])


def make_pair(
    kind: str,
    ghost: int | None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    **kwargs: object,
) -> tuple[nn.Module, GhostBatchNorm]:
    """(plain BN, GBN) with identical random affine parameters and running statistics."""
    plain_cls, ghost_cls = {
        "1d": (nn.BatchNorm1d, GhostBatchNorm1d),
        "2d": (nn.BatchNorm2d, GhostBatchNorm2d),
    }[kind]
    torch.manual_seed(seed)
    bn = plain_cls(C, dtype=dtype, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        if bn.track_running_stats:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    gbn = ghost_cls(C, dtype=dtype, ghost_batch_size=ghost, **kwargs)
    gbn.load_state_dict(bn.state_dict())
    return bn, gbn


def random_input(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    # Non-zero mean and non-unit scale so that the statistics matter.
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 1.5).to(dtype)


def assert_close(actual: Tensor, expected: Tensor, tol: float) -> None:
    """Relative tolerance `tol`, with absolute slack `tol` times the tensor's scale."""
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def tolerance(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def run_step(
    bn: nn.Module,
    gbn: nn.Module,
    x: Tensor,
    ghost: int,
    grad_seed: int,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """One forward/backward of the reference and of GBN on the same data."""
    results = []
    for module, forward in (
        (bn, lambda inp: chunked_reference(bn, inp, ghost)),
        (gbn, gbn),
    ):
        for p in module.parameters():
            p.grad = None
        inp = x.detach().clone().requires_grad_()
        out = forward(inp)
        g = torch.Generator().manual_seed(grad_seed)
        grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        out.backward(grad)
        grads = [inp.grad] + [p.grad for p in module.parameters()]
        results.append((out.detach(), *grads))
    return results[0], results[1]


def assert_same_state(bn: nn.Module, gbn: nn.Module, tol: float) -> None:
    if bn.running_mean is None:
        assert gbn.running_mean is None and gbn.running_var is None
        return
    assert_close(gbn.running_mean, bn.running_mean, tol)
    assert_close(gbn.running_var, bn.running_var, tol)
    assert torch.equal(gbn.num_batches_tracked, bn.num_batches_tracked)


SHAPES = {
    "1d-NC": ("1d", (C,)),
    "1d-NCL": ("1d", (C, 7)),
    "2d": ("2d", (C, 4, 3)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [96, 100], ids=["divisible", "smaller-last-ghost"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "cma"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_matches_chunked_reference(
    shape: str, momentum: float | None, batch: int, dtype: torch.dtype
) -> None:
    kind, rest = SHAPES[shape]
    ghost = 16
    bn, gbn = make_pair(kind, ghost, dtype, momentum=momentum)
    tol = tolerance(dtype)
    for step in range(3):
        x = random_input((batch, *rest), dtype, seed=step)
        ref, got = run_step(bn, gbn, x, ghost, grad_seed=100 + step)
        for r, g in zip(ref, got, strict=True):
            assert_close(g, r, tol)
        assert_same_state(bn, gbn, tol)
    assert int(gbn.num_batches_tracked) == 3 * -(-batch // ghost)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_ghost_statistics_are_used(kind: str) -> None:
    """A GBN that silently used whole-batch statistics would pass a weak test; not this one."""
    rest = SHAPES["2d"][1] if kind == "2d" else SHAPES["1d-NCL"][1]
    bn, gbn = make_pair(kind, 8)
    # Ghosts with very different statistics.
    x = random_input((32, *rest), torch.float64, seed=1)
    x = x * torch.arange(1, 33, dtype=x.dtype).view(-1, *([1] * len(rest)))
    y_plain, y_ghost = bn(x), gbn(x)
    assert (y_plain - y_ghost).abs().max() > 0.1
    assert (bn.running_var - gbn.running_var).abs().max() > 0.1
    assert int(gbn.num_batches_tracked) == 4 and int(bn.num_batches_tracked) == 1
    # Each ghost batch is itself standardized.
    per_ghost = y_ghost.unflatten(0, (4, 8)).transpose(1, 2).flatten(2)
    w = gbn.weight.view(1, C, 1)
    b = gbn.bias.view(1, C, 1)
    normalized = (per_ghost - b) / w
    assert_close(normalized.mean(-1), torch.zeros(4, C, dtype=x.dtype), 1e-10)
    assert_close(normalized.var(-1, unbiased=False), torch.ones(4, C, dtype=x.dtype), 1e-4)


@pytest.mark.parametrize("ghost", [32, 40, None], ids=["equal", "larger", "none"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_ghost_at_least_batch_is_exactly_batch_norm(shape: str, ghost: int | None) -> None:
    kind, rest = SHAPES[shape]
    bn, gbn = make_pair(kind, ghost, torch.float32)
    for step in range(2):
        x = random_input((32, *rest), torch.float32, seed=step)
        results = []
        for module in (bn, gbn):
            module.zero_grad(set_to_none=True)
            inp = x.clone().requires_grad_()
            out = module(inp)
            out.backward(torch.ones_like(out) * torch.linspace(-1, 1, out.numel()).view(out.shape))
            results.append((out, inp.grad, module.weight.grad, module.bias.grad))
        for r, g in zip(*results, strict=True):
            assert torch.equal(r, g)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(bn, name), getattr(gbn, name))


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_eval_uses_running_statistics_like_batch_norm(kind: str) -> None:
    rest = SHAPES["2d"][1] if kind == "2d" else SHAPES["1d-NCL"][1]
    bn, gbn = make_pair(kind, 8)
    for step in range(2):
        x = random_input((40, *rest), torch.float64, seed=step)
        chunked_reference(bn, x, 8)
        gbn(x)
    bn.eval()
    gbn.eval()
    x = random_input((40, *rest), torch.float64, seed=9)
    assert_close(gbn(x), bn(x), 1e-10)
    # Same state -> same function, bit for bit.
    plain = copy.deepcopy(bn)
    plain.load_state_dict(gbn.state_dict())
    assert torch.equal(gbn(x), plain(x))
    n = gbn.num_batches_tracked.clone()
    gbn(x)
    assert torch.equal(gbn.num_batches_tracked, n)


@pytest.mark.parametrize("batch", [48, 44], ids=["divisible", "smaller-last-ghost"])
def test_channels_last(batch: int) -> None:
    bn, gbn = make_pair("2d", 8, torch.float32)
    x = random_input((batch, C, 6, 5), torch.float32, seed=3)
    x = x.contiguous(memory_format=torch.channels_last)
    ref, got = run_step(bn, gbn, x, 8, grad_seed=4)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert got[1].is_contiguous(memory_format=torch.channels_last)
    for r, g in zip(ref, got, strict=True):
        assert_close(g, r, 1e-5)
    assert_same_state(bn, gbn, 1e-5)


def test_unusual_strides() -> None:
    """An input whose spatial dims cannot be merged as a view still gives the right values."""
    bn, gbn = make_pair("2d", 8)
    x = random_input((24, 6, 5, C), torch.float64, seed=5).permute(0, 3, 2, 1)  # [24, C, 5, 6]
    ref, got = run_step(bn, gbn, x, 8, grad_seed=6)
    for r, g in zip(ref, got, strict=True):
        assert_close(g, r, 1e-10)
    assert_same_state(bn, gbn, 1e-10)


BF16_WAYS = pytest.mark.parametrize("keep", [True, False], ids=["bf16-kept", "bf16-copied"])


@pytest.fixture
def bf16_way(keep: bool, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of normalizing a bf16 input, forced here (CPU) though CUDA picks "kept"."""
    monkeypatch.setattr(gbn_module, "KEEP_BF16", keep)
    return keep


@BF16_WAYS
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "channels-last"])
@pytest.mark.parametrize("batch", [48, 44], ids=["divisible", "smaller-last-ghost"])
def test_bf16_autocast_behaves_like_batch_norm(
    batch: int, memory_format: torch.memory_format, bf16_way: bool
) -> None:
    """Under CPU autocast BatchNorm is not cast: a bf16 input (e.g. a conv output) gives a bf16
    output with fp32 statistics, an fp32 input an fp32 output. GBN does the same."""
    bn, gbn = make_pair("2d", 8, torch.float32)
    x32 = random_input((batch, C, 4, 3), torch.float32, seed=7)
    x32 = x32.contiguous(memory_format=memory_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, got = run_step(bn, gbn, x32.bfloat16(), 8, grad_seed=8)
        assert got[0].dtype == ref[0].dtype == torch.bfloat16
        assert got[1].dtype == ref[1].dtype == torch.bfloat16
        assert got[2].dtype == ref[2].dtype == torch.float32
        # bf16 has 8 significant bits: compare at a few ulps.
        for r, g in zip(ref, got, strict=True):
            torch.testing.assert_close(g.float(), r.float(), rtol=2e-2, atol=2e-2)
        # Statistics are computed from the same bf16 values in fp32 on both sides.
        assert_close(gbn.running_mean, bn.running_mean, 1e-5)
        assert_close(gbn.running_var, bn.running_var, 1e-5)
        assert torch.equal(gbn.num_batches_tracked, bn.num_batches_tracked)
        ref32, got32 = run_step(bn, gbn, x32, 8, grad_seed=9)
        assert got32[0].dtype == ref32[0].dtype == torch.float32
        assert_close(got32[0], ref32[0], 1e-5)


@BF16_WAYS
def test_bf16_module(bf16_way: bool) -> None:
    """A model cast to bf16 (parameters and buffers bf16) also runs and matches loosely."""
    bn, gbn = make_pair("2d", 8, torch.float32)
    bn, gbn = bn.bfloat16(), gbn.bfloat16()
    x = random_input((40, C, 4, 3), torch.bfloat16, seed=10)
    ref, got = run_step(bn, gbn, x, 8, grad_seed=11)
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g.float(), r.float(), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(gbn.running_var, bn.running_var, rtol=2e-2, atol=2e-2)


def exact_from_bf16(
    kind: str, batch: int, ghost: int, seed: int, correlated: bool = False
) -> tuple[list, list, list]:
    """One chunked-BN step in float64 on bf16 values (the exact answer for those values),
    and the same step in bf16 autocast by native BatchNorm (chunked) and by GBN.

    `correlated`: the output gradient mostly follows the normalized input, so that the two
    parts of the input gradient nearly cancel."""
    rest = SHAPES["2d"][1] if kind == "2d" else SHAPES["1d-NCL"][1]
    g = torch.Generator().manual_seed(seed)
    x = random_input((batch, *rest), torch.float32, seed=seed).bfloat16()
    grad = torch.randn(x.shape, generator=g)
    if correlated:
        grad = 0.9 * (x.float() - 1.5) / 2.0 + 0.1 * grad
    grad = grad.bfloat16()
    results = []
    for dtype, chunked in ((torch.float64, True), (torch.float32, True), (torch.float32, False)):
        bn, gbn = (m.to(dtype) for m in make_pair(kind, ghost, torch.float32, seed=seed))
        module = bn if chunked else gbn
        inp = x.to(dtype) if dtype == torch.float64 else x
        inp = inp.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float64):
            out = chunked_reference(bn, inp, ghost) if chunked else gbn(inp)
            out.backward(grad.to(out.dtype))
        results.append([module.weight.grad, module.bias.grad, module.running_mean,
                        module.running_var, out.detach(), inp.grad])
    return results[0], results[1], results[2]


@BF16_WAYS
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_bf16_statistics_and_parameter_gradients_are_exact_to_fp32(kind: str, bf16_way: bool):
    """The fp32 quantities (parameter gradients, running statistics) come out as exact as the
    native kernel makes them, not rounded through bf16; the bf16 ones (output, input
    gradient) carry bf16 rounding on both sides."""
    for seed in range(4):
        exact, native, ghost = exact_from_bf16(kind, batch=44, ghost=8, seed=seed)
        for i, (e, n, g) in enumerate(zip(exact, native, ghost, strict=True)):
            e, scale = e.float(), e.abs().max().item()
            native_err = (n.float() - e).abs().max().item() / scale
            ghost_err = (g.float() - e).abs().max().item() / scale
            limit = 1e-5 if i < 4 else 1e-2  # fp32 results, then bf16 ones
            assert native_err < limit and ghost_err < limit, (seed, i, native_err, ghost_err)


def bf16_ulps_off(actual: Tensor, exact: Tensor) -> float:
    """Worst error in units of the last place of bf16 at each exact value (correctly rounded:
    at most 0.5), with a floor of fp32-level slack where the exact value is near zero."""
    exact = exact.double()
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact).exponent - 8)
    floor = 1e-6 * exact.abs().max()
    return ((actual.double() - exact).abs() / torch.maximum(ulp, floor)).max().item()


@BF16_WAYS
@pytest.mark.parametrize("correlated", [False, True], ids=["random-dy", "cancelling-dy"])
def test_bf16_output_and_input_gradient_are_rounded_once(correlated: bool, bf16_way: bool):
    """Each bf16 element within a bf16 step or two of the exact value, as native BatchNorm
    gives it (0.5 and 1.65 steps here at worst; GBN 0.5 and 0.67); rounding an intermediate
    sum to bf16 first was found off by 50 to 4,000 steps."""
    for seed in range(3):
        exact, native, ghost = exact_from_bf16("2d", 44, 8, seed, correlated=correlated)
        for i in (4, 5):  # the output, the input gradient
            native_off = bf16_ulps_off(native[i], exact[i])
            ghost_off = bf16_ulps_off(ghost[i], exact[i])
            assert ghost_off <= max(2.0, native_off), (seed, i, ghost_off, native_off)


@pytest.mark.parametrize("keep", [True, False])
def test_kept_bf16_saves_the_bf16_input_for_backward(keep: bool, monkeypatch) -> None:
    monkeypatch.setattr(gbn_module, "KEEP_BF16", keep)
    _, gbn = make_pair("2d", 8, torch.float32)
    x = random_input((48, C, 4, 3), torch.bfloat16, seed=20).requires_grad_()
    saved: list[torch.dtype] = []

    def pack(t: Tensor) -> Tensor:
        if t.shape == x.shape:
            saved.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = gbn(x)
    out.float().sum().backward()
    assert saved == ([torch.bfloat16] if keep else [torch.float32])
    assert out.dtype == x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_affine_false(kind: str) -> None:
    rest = SHAPES["2d"][1] if kind == "2d" else SHAPES["1d-NCL"][1]
    bn, gbn = make_pair(kind, 8, affine=False)
    assert gbn.weight is None and gbn.bias is None
    for step in range(2):
        x = random_input((44, *rest), torch.float64, seed=step)
        ref, got = run_step(bn, gbn, x, 8, grad_seed=step)
        for r, g in zip(ref, got, strict=True):
            assert_close(g, r, 1e-10)
        assert_same_state(bn, gbn, 1e-10)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_track_running_stats_false(kind: str, training: bool) -> None:
    """Without running statistics BatchNorm always uses batch statistics, so GBN always uses
    ghost statistics, in eval mode too, exactly like the chunked method."""
    rest = SHAPES["2d"][1] if kind == "2d" else SHAPES["1d-NC"][1]
    bn, gbn = make_pair(kind, 8, track_running_stats=False)
    bn.train(training)
    gbn.train(training)
    assert gbn.running_mean is None and gbn.num_batches_tracked is None
    x = random_input((44, *rest), torch.float64, seed=12)
    ref, got = run_step(bn, gbn, x, 8, grad_seed=13)
    for r, g in zip(ref, got, strict=True):
        assert_close(g, r, 1e-10)
    assert (got[0] - bn(x)).abs().max() > 1e-3  # really per ghost, not whole batch


def test_gradcheck() -> None:
    """The hand-written backward against finite differences (float64)."""
    _, gbn = make_pair("2d", 4)
    x = random_input((10, C, 2, 3), torch.float64, seed=14).requires_grad_()
    torch.autograd.gradcheck(gbn, (x,))
    _, gbn1 = make_pair("1d", 3)
    x1 = random_input((8, C), torch.float64, seed=15).requires_grad_()
    torch.autograd.gradcheck(gbn1, (x1,))


def test_partial_gradients() -> None:
    """Frozen affine parameters, or an input that needs no gradient."""
    bn, gbn = make_pair("2d", 8)
    x = random_input((44, C, 3, 2), torch.float64, seed=16)
    gbn.weight.requires_grad_(False)
    bn.weight.requires_grad_(False)
    ref, got = run_step(bn, gbn, x, 8, grad_seed=17)
    assert ref[2] is None and got[2] is None  # no weight gradient
    for r, g in zip(ref, got, strict=True):
        if r is not None:
            assert_close(g, r, 1e-10)
    # Input without gradient: only the affine gradients are computed.
    bn.weight.requires_grad_(True)
    gbn.weight.requires_grad_(True)
    for module, forward in ((bn, lambda t: chunked_reference(bn, t, 8)), (gbn, gbn)):
        module.zero_grad(set_to_none=True)
        (forward(x) * x).sum().backward()
    assert_close(gbn.weight.grad, bn.weight.grad, 1e-10)
    assert_close(gbn.bias.grad, bn.bias.grad, 1e-10)


def test_single_value_ghost_raises_like_batch_norm() -> None:
    gbn = GhostBatchNorm1d(C, ghost_batch_size=8)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        gbn(torch.randn(17, C))  # last ghost batch has one sample
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        GhostBatchNorm1d(C, ghost_batch_size=1)(torch.randn(4, C))
    GhostBatchNorm1d(C, ghost_batch_size=1)(torch.randn(4, C, 3))  # 3 values: fine


def test_state_dict_is_batch_norm_compatible() -> None:
    for kind, rest, plain_cls in (
        ("1d", (C, 7), nn.BatchNorm1d),
        ("2d", (C, 4, 3), nn.BatchNorm2d),
    ):
        _, gbn = make_pair(kind, 8)
        assert list(gbn.state_dict()) == list(plain_cls(C).state_dict())
        assert [n for n, _ in gbn.named_parameters()] == ["weight", "bias"]
        for step in range(3):
            gbn(random_input((44, *rest), torch.float64, seed=step))
        plain = plain_cls(C, dtype=torch.float64)
        plain.load_state_dict(gbn.state_dict())
        plain.eval()
        gbn.eval()
        x = random_input((20, *rest), torch.float64, seed=20)
        assert torch.equal(plain(x), gbn(x))


def test_is_a_batch_norm_and_repr() -> None:
    gbn = GhostBatchNorm2d(C, momentum=None, ghost_batch_size=32)
    assert isinstance(gbn, nn.BatchNorm2d) and isinstance(gbn, GhostBatchNorm)
    assert "ghost_batch_size=32" in repr(gbn)
    assert "ghost_batch_size=None" in repr(GhostBatchNorm1d(C))
    with pytest.raises(ValueError, match="expected 4D input"):
        gbn(torch.randn(8, C, 3))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_invalid_ghost_size(bad: object) -> None:
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GhostBatchNorm2d(C, ghost_batch_size=bad)  # type: ignore[arg-type]
    gbn = GhostBatchNorm1d(C, ghost_batch_size=4)
    with pytest.raises(ValueError, match="ghost_batch_size"):
        gbn.ghost_batch_size = bad  # type: ignore[assignment]
    assert gbn.ghost_batch_size == 4
    with pytest.raises(ValueError, match="ghost_batch_size"):
        convert_to_ghost_bn(nn.Sequential(nn.BatchNorm1d(C)), bad)  # type: ignore[arg-type]


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "image": nn.Sequential(
                nn.Conv2d(3, C, 3), nn.BatchNorm2d(C, momentum=0.3, eps=1e-3), nn.ReLU()
            ),
            "signal": nn.Sequential(
                nn.Conv1d(1, C, 3), nn.BatchNorm1d(C, affine=False, momentum=None), nn.ReLU()
            ),
        }
    ).double()
    # Some history in the buffers.
    model["image"](torch.randn(16, 3, 6, 6, dtype=torch.float64))
    model["signal"](torch.randn(16, 1, 9, dtype=torch.float64))
    return model


def test_convert_to_ghost_bn_keeps_state() -> None:
    model = _small_model()
    bn2 = model["image"][1]
    before = copy.deepcopy(model.state_dict())
    weight = bn2.weight
    out = convert_to_ghost_bn(model, 4)
    assert out is model
    g2, g1 = model["image"][1], model["signal"][1]
    assert type(g2) is GhostBatchNorm2d and type(g1) is GhostBatchNorm1d
    assert g2.ghost_batch_size == g1.ghost_batch_size == 4
    assert g2.weight is weight  # same Parameter: an optimizer built earlier stays valid
    assert (g2.momentum, g2.eps, g2.affine, g2.track_running_stats) == (0.3, 1e-3, True, True)
    assert (g1.momentum, g1.affine) == (None, False)
    assert g2.running_mean.dtype == torch.float64
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # Converting again only changes the ghost size.
    convert_to_ghost_bn(model, 8)
    assert model["image"][1] is g2 and g2.ghost_batch_size == 8
    # And back to plain BatchNorm.
    convert_to_batch_norm(model)
    assert type(model["image"][1]) is nn.BatchNorm2d
    assert type(model["signal"][1]) is nn.BatchNorm1d
    assert model["image"][1].weight is weight
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_convert_keeps_mode_and_root_module() -> None:
    bn = nn.BatchNorm2d(C).eval()
    gbn = convert_to_ghost_bn(bn, 16)
    assert isinstance(gbn, GhostBatchNorm2d) and not gbn.training
    back = convert_to_batch_norm(gbn)
    assert type(back) is nn.BatchNorm2d and not back.training


# ------------------------------------------------------------------- split="chunk"


def test_chunk_split_normalizes_torch_chunk_pieces_by_hand() -> None:
    """100 samples, ghost 32: the authors' x.chunk(100 // 32) gives 34, 34, 32."""
    x = random_input((100, C, 3), torch.float64, seed=11)
    gbn = GhostBatchNorm1d(C, dtype=torch.float64, ghost_batch_size=32, split="chunk")
    with torch.no_grad():
        gbn.weight.uniform_(0.5, 1.5)
        gbn.bias.normal_()
    chunks = x.chunk(100 // 32)
    assert [len(c) for c in chunks] == [34, 34, 32]
    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    expected = torch.cat(
        [
            nn.functional.batch_norm(c, rm, rv, gbn.weight, gbn.bias, True, 0.1, gbn.eps)
            for c in chunks
        ]
    )
    out = gbn(x)
    assert_close(out, expected.detach(), 1e-10)
    # The running statistics saw the three chunks in order, as plain BatchNorm would have.
    assert_close(gbn.running_mean, rm, 1e-10)
    assert_close(gbn.running_var, rv, 1e-10)
    assert int(gbn.num_batches_tracked) == 3
    # The default split is another function on this batch: 32, 32, 32, 4.
    fixed = GhostBatchNorm1d(C, dtype=torch.float64, ghost_batch_size=32)
    fixed.load_state_dict(gbn.state_dict())
    assert fixed.split == "fixed"
    assert not torch.allclose(fixed(x), out)


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize(("batch", "ghost"), [(100, 32), (9, 4), (10, 4), (64, 16), (40, 32)])
def test_chunk_split_equals_chunked_batch_norm_forward_backward(kind, batch, ghost) -> None:
    bn, gbn = make_pair(kind, ghost, momentum=0.2)
    gbn.split = "chunk"
    shape = (batch, C, 3) if kind == "1d" else (batch, C, 2, 3)
    x = random_input(shape, torch.float64, seed=batch)
    x_ref, x_gbn = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = torch.cat([bn(c) for c in x_ref.chunk(batch // ghost)])
    out = gbn(x_gbn)
    assert_close(out, expected, 1e-10)
    grad = random_input(shape, torch.float64, seed=batch + 1)
    expected.backward(grad)
    out.backward(grad)
    assert_close(x_gbn.grad, x_ref.grad, 1e-9)
    assert_close(gbn.weight.grad, bn.weight.grad, 1e-9)
    assert_close(gbn.bias.grad, bn.bias.grad, 1e-9)
    assert_close(gbn.running_mean, bn.running_mean, 1e-10)
    assert_close(gbn.running_var, bn.running_var, 1e-10)
    assert int(gbn.num_batches_tracked) == int(bn.num_batches_tracked)


def test_split_is_validated_repr_and_converted() -> None:
    with pytest.raises(ValueError, match=r"split must be one of fixed, chunk, got 'even'"):
        GhostBatchNorm1d(C, ghost_batch_size=4, split="even")
    with pytest.raises(ValueError, match="split must be one of"):
        convert_to_ghost_bn(nn.Sequential(nn.BatchNorm1d(C)), 4, split="torch")
    model = convert_to_ghost_bn(nn.Sequential(nn.BatchNorm1d(C)), 4, split="chunk")
    assert model[0].split == "chunk" and "split='chunk'" in repr(model[0])
    # Converting again sets the split of layers that already are ghost layers.
    convert_to_ghost_bn(model, 8)
    assert model[0].split == "fixed" and model[0].ghost_batch_size == 8
