"""A prepared input shared by layers that read the same X (fp4swift.prepare_input, and its use
by fp4swift.torch for q/k/v and gate/up): the same results bit for bit, real errors."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import fp4swift as f4

LINEAR_RECIPES = ["fp32", "fp4-direct", "wang2025", "mxfp4", "nvfp4", "fp8", "zhou2025"]


def _x(rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    x[..., 1] *= 25  # an outlier channel, so OCC has a residual
    return x


@pytest.mark.parametrize("recipe", LINEAR_RECIPES)
@pytest.mark.parametrize("shape", [(64, 32), (3, 5, 64), (1, 32), (256, 128)])
def test_shared_input_equals_separate_forwards_and_backwards(recipe, shape):
    rng = np.random.default_rng(abs(hash((recipe, shape))) % 2**32)
    x = _x(rng, shape)
    K = shape[-1]
    p = f4.prepare_input(x, recipe)
    for n in ((32, 64) if recipe == "mxfp4" else (16, 48)):  # two layers on one prepared input (mxfp4: N % 32 == 0)
        w = rng.standard_normal((n, K), dtype=np.float32) / np.sqrt(K)
        b = rng.standard_normal(n, dtype=np.float32)
        y0, s0 = f4.linear_forward(x, w, b, recipe)
        y1, s1 = f4.linear_forward(None, w, b, recipe, prepared=p)
        assert y1.shape == y0.shape and y1.tobytes() == y0.tobytes()
        assert s1.nbytes == s0.nbytes
        if s0.residual is not None:
            assert s1.residual_nnz == s0.residual_nnz > 0
        dy = rng.standard_normal(y0.shape, dtype=np.float32)
        s1.gradient_seed = s0.gradient_seed  # the same draws for a stochastic dY
        for g0, g1 in zip(f4.linear_backward(dy, s0), f4.linear_backward(dy, s1)):
            assert g0.tobytes() == g1.tobytes()


def test_sharing_layers_run_their_backwards_in_any_order_and_release_independently():
    rng = np.random.default_rng(1)
    x = _x(rng, (128, 64))
    p = f4.prepare_input(x, "wang2025")
    ws = [rng.standard_normal((n, 64), dtype=np.float32) for n in (32, 16, 8)]
    outs = [f4.linear_forward(None, w, None, "wang2025", prepared=p) for w in ws]
    ref = [f4.linear_forward(x, w, None, "wang2025") for w in ws]
    dys = [rng.standard_normal(y.shape, dtype=np.float32) for y, _ in outs]
    for i in (2, 0, 1):  # the backward releases each layer's state, not the shared buffers
        got = f4.linear_backward(dys[i], outs[i][1])
        want = f4.linear_backward(dys[i], ref[i][1])
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got[:2], want[:2]))
        with pytest.raises(f4.FP4StateError):
            f4.linear_backward(dys[i], outs[i][1])


def test_prepared_operand_buffer_is_reused_and_checked():
    # The float32 operand exists when the forward GEMM is simulated.
    rng = np.random.default_rng(2)
    x = _x(rng, (32, 32))
    r = f4.Recipe.get("wang2025").replace(gemm="simulated")
    buf = np.empty((32, 32), dtype=np.float32)
    p = f4.prepare_input(x, r, operand=buf)
    assert p.operand.base is buf or p.operand is buf
    w = rng.standard_normal((8, 32), dtype=np.float32)
    assert f4.linear_forward(None, w, None, r, prepared=p)[0].tobytes() == \
        f4.linear_forward(x, w, None, r)[0].tobytes()
    with pytest.raises(ValueError, match="operand must be"):
        f4.prepare_input(x, r, operand=np.empty((32, 31), dtype=np.float32))
    with pytest.raises(ValueError, match="operand must be"):
        f4.prepare_input(x, r, operand=np.empty((32, 32), dtype=np.float64))
    with pytest.raises(ValueError, match="must not overlap x"):
        f4.prepare_input(x, r, operand=x)


def test_packed_forward_needs_no_float_operand():
    # On codes, the forward GEMM reads X_q from the prepared state: no float32 copy of X_q.
    rng = np.random.default_rng(4)
    x = _x(rng, (32, 64))
    w = rng.standard_normal((32, 64), dtype=np.float32)
    for name in ("wang2025", "fp4-direct", "mxfp4", "nvfp4"):
        p = f4.prepare_input(x, name)
        assert p.operand is None, name
        assert f4.linear_forward(None, w, None, name, prepared=p)[0].tobytes() == \
            f4.linear_forward(x, w, None, name)[0].tobytes()
    # zhou2025 saves its own FP8 X for the backward: its FP4 codes travel in the operand buffer.
    assert f4.prepare_input(x, "zhou2025").operand is not None


def test_prepared_input_errors():
    rng = np.random.default_rng(3)
    x = _x(rng, (32, 32))
    w = rng.standard_normal((8, 32), dtype=np.float32)
    p = f4.prepare_input(x, "wang2025")
    with pytest.raises(ValueError, match="made under recipe 'wang2025'"):
        f4.linear_forward(None, w, None, "fp4-direct", prepared=p)
    with pytest.raises(ValueError, match="not the array prepare_input saw"):
        f4.linear_forward(x.copy(), w, None, "wang2025", prepared=p)
    assert f4.linear_forward(x, w, None, "wang2025", prepared=p)[0].shape == (32, 8)  # the same x is fine
    with pytest.raises(ValueError, match="input features"):
        f4.linear_forward(None, w[:, :16], None, "wang2025", prepared=p)
    with pytest.raises(ValueError, match=r"b must have shape \(8,\)"):
        f4.linear_forward(None, w, np.zeros(7, np.float32), "wang2025", prepared=p)
    with pytest.raises(TypeError, match="prepared must come from prepare_input"):
        f4.linear_forward(None, w, None, "wang2025", prepared=object())
    with pytest.raises(ValueError, match="runs its own kernels"):
        f4.prepare_input(x, "quartet")
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(f4.NonFiniteError):
        f4.prepare_input(bad, "wang2025")
    with pytest.raises(f4.NonFiniteError):  # a non-finite W is still caught by the GEMM step
        f4.linear_forward(None, np.full((8, 32), np.inf, np.float32), None, "wang2025", prepared=p)


torch = pytest.importorskip("torch")


def _train(share: bool, steps: int = 3):
    import fp4swift.torch as f4t
    from fp4swift.train.model import ModelConfig, build_model
    from fp4swift.train.recipes import prepare_model

    previous = f4t.set_input_sharing(share)
    try:
        model = prepare_model(build_model(ModelConfig(d_model=32, layers=2, heads=2, seq_len=32), 0), "wang2025")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        losses = []
        for _ in range(steps):
            t = torch.from_numpy(rng.integers(0, 256, (4, 32))).long()
            loss = model.loss(t, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]
    finally:
        f4t.set_input_sharing(previous)


def test_torch_training_with_and_without_sharing_is_identical():
    (l1, p1), (l0, p0) = _train(True), _train(False)
    assert l1 == l0
    assert all(torch.equal(a, b) for a, b in zip(p1, p0))


def test_torch_sharing_sees_in_place_changes_and_other_recipes():
    import fp4swift.torch as f4t

    torch.manual_seed(0)
    a = f4t.FP4Linear(32, 16, recipe="wang2025")
    b = f4t.FP4Linear(32, 16, recipe="wang2025")
    c = f4t.FP4Linear(32, 16, recipe="fp4-direct")
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    x = torch.randn(64, 32, requires_grad=True) * 1.0  # an activation: sharing applies
    with torch.no_grad():
        x[:, 0] *= 30
    ya = a(x)
    x.mul_(0.5)  # in place: the next layer must not reuse the old quantization
    yb = b(x)
    assert torch.allclose(yb, b(x.clone()), atol=0, rtol=0)
    assert not torch.equal(ya, yb)
    yc = c(x)  # another recipe on the same tensor
    f4t.set_input_sharing(False)
    try:
        assert torch.equal(yc, c(x))
    finally:
        f4t.set_input_sharing(True)


def test_torch_shares_graph_activations_only(monkeypatch):
    import fp4swift.torch as f4t

    calls = []
    real = f4t.prepare_input
    monkeypatch.setattr(f4t, "prepare_input", lambda *a, **k: calls.append(1) or real(*a, **k))
    layers = [f4t.FP4Linear(32, 16, recipe="wang2025") for _ in range(3)]
    h = torch.randn(64, 32, requires_grad=True) * 2.0
    ys = [m(h) for m in layers]  # q, k, v
    assert len(calls) == 1
    f4t.set_input_sharing(False)
    try:
        for m, y in zip(layers, ys):
            assert torch.equal(m(h), y)
    finally:
        f4t.set_input_sharing(True)
    calls.clear()
    leaf = torch.randn(64, 32)  # a user's tensor (no grad_fn): never cached
    for m in layers:
        m(leaf)
    assert calls == []


def test_torch_sharing_keeps_no_input_alive():
    import weakref

    import fp4swift.torch as f4t

    layer = f4t.FP4Linear(16, 8, recipe="wang2025")
    x = torch.randn(8, 16, requires_grad=True) * 1.0
    layer(x)
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None


def test_shared_input_takes_the_call_numbers_separate_forwards_take():
    # Stochastic recipes (nvfp4) seed each backward with a per-forward call number; a prepared
    # input must not take one itself, or every later draw shifts and sharing changes gradients.
    from fp4swift import linear

    rng = np.random.default_rng(8)
    x = _x(rng, (32, 64))
    w = rng.standard_normal((32, 64), dtype=np.float32)
    n0 = next(linear._CALLS)
    _, a = f4.linear_forward(x, w, None, "nvfp4")
    _, b = f4.linear_forward(x, w, None, "nvfp4")
    n1 = next(linear._CALLS)
    p = f4.prepare_input(x, "nvfp4")
    _, c = f4.linear_forward(None, w, None, "nvfp4", prepared=p)
    _, d = f4.linear_forward(None, w, None, "nvfp4", prepared=p)
    n2 = next(linear._CALLS)
    assert n1 - n0 == n2 - n1 == 3  # two layers, one call number each (+1 for the probe)
    assert len({s.gradient_seed for s in (a, b, c, d)}) == 4  # every layer draws afresh
