"""The fast dense block computes exactly what the plain block computes.

- float64, reference kernels: outputs, every gradient, the input gradient and the running
  statistics equal the plain model's to 1e-10 (the algorithm is exact: shared statistics, one
  buffer, the BN backward done once per feature map);
- the C++ kernels equal the reference kernels on strided channel slices, float32 and bfloat16;
- float32 with the C++ kernels: within float32 rounding of a float64 reference;
- bfloat16 autocast: no further from the float64 reference than the plain block under autocast;
- same parameters and state_dict, conversion both ways, eval mode, dropout with the same seed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from densenet_repro import DenseNet
from densenet_repro.models import fast_dense
from densenet_repro.models.densenet import _DenseBlock, _Transition

# Small nets of every kind the block supports (CIFAR stem: 8x8 inputs keep every stage non-empty).
NETS = {
    "bc": dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5),        # DenseNet-BC
    "plain": dict(depth=10, growth_rate=4),                                        # DenseNet (no B, no C)
    "bc_dropout": dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5, drop_rate=0.2),
    "imagenet": dict(block_config=(2, 2), growth_rate=4, bottleneck=True, compression=0.5, stem="imagenet"),
}


def make(kind: str, dtype=torch.float64) -> DenseNet:
    torch.manual_seed(0)
    model = DenseNet(num_classes=5, **NETS[kind])
    for m in model.modules():  # non-trivial BN parameters, so that gamma/beta matter
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
    return model.to(dtype)  # the same numbers in every dtype


def batch(kind: str, dtype=torch.float64, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    size = 32 if NETS[kind].get("stem") == "imagenet" else 8
    x = torch.randn(n, 3, size, size, generator=g, dtype=dtype) * 2 + 0.5
    return x, torch.randint(0, 5, (n,), generator=g)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: bool = False, seed: int = 7):
    """One forward/backward; returns {name: tensor} of output, input grad, param grads, buffers."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    loss = nn.functional.cross_entropy(out.double(), y) + (out.double() ** 2).mean()
    loss.backward()
    res = {"out": out.detach(), "x.grad": x.grad}
    res.update({n + ".grad": p.grad for n, p in model.named_parameters()})
    res.update({n: b for n, b in model.named_buffers()})
    return {k: v.double() for k, v in res.items()}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", NETS)
def test_float64_equal_to_plain(kind, channels_last):
    plain = make(kind)
    fast = fast_dense.convert(copy.deepcopy(plain), kernels="torch")
    x, y = batch(kind)
    if channels_last:  # then the transitions take the block's statistics (FastTransition)
        plain, fast = plain.to(memory_format=torch.channels_last), fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        shared = []
        fast.features.transition1.register_forward_pre_hook(
            lambda mod, args: shared.append(hasattr(args[0], "_fast_dense_stats")))
    for step in range(2):  # twice: running statistics and num_batches_tracked keep matching
        ref = train_step(plain, x, y, seed=step)
        got = train_step(fast, x, y, seed=step)
        assert ref.keys() == got.keys()
        for name in ref:
            assert rel_err(got[name], ref[name]) < 1e-10, name
    if channels_last:
        assert shared == [True, True]


def test_same_parameters_state_dict_and_back():
    model = make("bc", torch.float32)
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    fast_dense.convert(model)
    assert fast_dense.is_fast(model)
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == keys
    plain = make("bc", torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)  # checkpoints load either way
    assert type(model.features.transition1) is fast_dense.FastTransition
    fast_dense.convert(model, fast=False)
    assert not fast_dense.is_fast(model)
    assert all(type(m) is _DenseBlock for m in model.modules() if isinstance(m, _DenseBlock))
    assert type(model.features.transition1) is _Transition


def _strided(rows: int, total: int, c: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, total, generator=g) * 2).to(dtype)[:, 3:3 + c]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [1, 12, 37, 150])
def test_cpp_kernels_equal_reference(dtype, c):
    cpp = fast_dense._kernels("cpp", torch.device("cpu"))
    ref = fast_dense.TorchKernels
    rows = 1000  # not a multiple of the kernels' 256-row blocks
    x, dz = _strided(rows, c + 9, c, dtype, 0), _strided(rows, c + 5, c, dtype, 1)
    g = torch.Generator().manual_seed(2)
    s, t, mu, gamma, a, b, cc = (torch.randn(c, generator=g) for _ in range(7))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)

    z1, z2 = torch.empty(rows, c, dtype=dtype), torch.empty(rows, c, dtype=dtype)
    cpp.affine_relu(x, z1, s, t)
    ref.affine_relu(x, z2, s, t)
    torch.testing.assert_close(z1, z2, **tol)

    for accumulate in (True, False):
        d1, d2 = _strided(rows, c + 7, c, dtype, 3), _strided(rows, c + 7, c, dtype, 3)
        sums1 = cpp.relu_bwd(dz, x, d1, s, t, mu, gamma, accumulate)
        sums2 = ref.relu_bwd(dz, x, d2, s, t, mu, gamma, accumulate)
        torch.testing.assert_close(d1, d2, **tol)
        for u, v in zip(sums1, sums2):
            torch.testing.assert_close(u, v, atol=1e-3, rtol=1e-5)

    for u, v in zip(cpp.col_stats(x), ref.col_stats(x)):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-6)

    o1, o2 = torch.empty(rows, c, dtype=dtype), torch.empty(rows, c, dtype=dtype)
    for gg in (dz, None):
        cpp.lincomb(gg, x, dz, o1, a, b, cc)
        ref.lincomb(gg, x, dz, o2, a, b, cc)
        torch.testing.assert_close(o1, o2, **tol)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["bc", "plain", "imagenet"])
def test_float32_cpp_within_rounding(kind, channels_last):
    """float32 with the C++ kernels against a float64 reference: float32 rounding, nothing more."""
    x, y = batch(kind, torch.float32)
    ref = train_step(make(kind), x.double(), y)
    fast = fast_dense.convert(make(kind, torch.float32))
    if channels_last:
        fast, x = fast.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    got = train_step(fast, x, y)
    for name in ref:
        if name.endswith("num_batches_tracked"):
            assert torch.equal(got[name], ref[name])
        else:
            # 1e-3: a ReLU whose input rounds to the other side of 0 in float32 moves a few sums
            assert rel_err(got[name], ref[name]) < 1e-3, name


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_no_worse_than_plain(channels_last):
    """Under bf16 autocast, the fast block's error (against float64) is the plain block's, give or take."""
    x, y = batch("bc", torch.float32, n=8)
    ref = train_step(make("bc"), x.double(), y)
    plain_model, fast_model = make("bc", torch.float32), fast_dense.convert(make("bc", torch.float32))
    if channels_last:
        plain_model = plain_model.to(memory_format=torch.channels_last)
        fast_model = fast_model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    plain = train_step(plain_model, x, y, autocast=True)
    fast = train_step(fast_model, x, y, autocast=True)
    worst_plain = max(rel_err(plain[n], ref[n]) for n in ref if n.endswith(".grad") or n == "out")
    worst_fast = max(rel_err(fast[n], ref[n]) for n in ref if n.endswith(".grad") or n == "out")
    assert worst_fast < 2 * worst_plain + 1e-3, (worst_fast, worst_plain)
    assert rel_err(fast["out"], ref["out"]) < 2e-2


@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_mode_and_layouts(channels_last):
    plain = make("bc", torch.float32)
    fast = fast_dense.convert(copy.deepcopy(plain))
    x, y = batch("bc", torch.float32)
    train_step(plain, x, y)
    train_step(fast, x, y)  # updates the running statistics identically
    if channels_last:
        plain, fast = plain.to(memory_format=torch.channels_last), fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)  # the buffer-based inference path
    torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)  # eval with autograd: the plain path


def test_inference_mode_then_no_grad():
    """The engine evaluates under inference_mode; a no_grad forward afterwards (a user's, a feature
    probe's) must not reuse a scratch buffer made there: inference tensors refuse in-place writes."""
    fast = fast_dense.convert(make("bc", torch.float32), kernels="torch").eval()  # torch ops check in-place writes
    x, _ = batch("bc", torch.float32)
    fast_dense.clear_workspace()
    with torch.inference_mode():
        expected = fast(x).clone()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected)


def test_synchronised_batchnorm_is_refused():
    model = fast_dense.convert(make("bc", torch.float32))

    class OtherBN(nn.BatchNorm2d):
        pass

    layer = model.features.denseblock1.denselayer1
    layer.norm1 = OtherBN(layer.norm1.num_features)
    with pytest.raises(RuntimeError, match="plain block"):
        model(batch("bc", torch.float32)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="no dense blocks"):
        fast_dense.convert(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="unknown kernels"):
        fast_dense.convert(make("bc", torch.float32), kernels="cuda")
    model = fast_dense.convert(make("bc", torch.float32))
    with pytest.raises(ValueError, match="more than 1 value"):
        model(torch.randn(1, 3, 1, 1))


def test_no_compiler_falls_back_to_the_plain_blocks(monkeypatch):
    """Without a C++ compiler the fast blocks cannot be built: one warning naming the speed cost, plain blocks."""
    import warnings

    from densenet_repro import fastpath, train
    from densenet_repro.models import fast_dense_cpu

    monkeypatch.setenv("CXX", "/nonexistent/c++")  # as on a machine without a compiler
    fast_dense_cpu.load.cache_clear()
    fast_dense_cpu.fast_kernels_available.cache_clear()
    try:
        assert fast_dense_cpu.compiler() is None
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            fast_dense_cpu.load()
        torch.manual_seed(0)
        model = DenseNet(depth=16, growth_rate=4, bottleneck=True, compression=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not fastpath.fast_blocks_supported(model, "cpu")
            fast_dense.convert(model)
            cfg = train.RunConfig(model="densenet_bc100_k12", dataset="c10+", device="cpu")
            assert fastpath.use_fast_blocks(cfg, model, torch.device("cpu"), False, wanted=True) is False  # the default
        assert not fast_dense.is_fast(model)
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(msgs) == 1 and "\n" not in msgs[0], msgs  # one line, once
        assert "plain blocks" in msgs[0] and "slower" in msgs[0] and "compiler" in msgs[0]
        model.train()(torch.randn(4, 3, 8, 8)).sum().backward()  # trains on the plain blocks
    finally:
        monkeypatch.undo()
        fast_dense_cpu.load.cache_clear()
        fast_dense_cpu.fast_kernels_available.cache_clear()
