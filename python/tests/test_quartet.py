"""The quartet linear recipe (numerics.md §6) against a float64 numpy reference.

Reference: rotations by f4.hadamard (tested against scipy in test_hadamard.py), so the
float32 rotated operands are the same bits; QuEST from test_quest.ref_quest; the backward
quantizers from reference.ref_quantize (e2m1, block(32), absmax_div3, stochastic) with the
seeds the layer documents; GEMMs, masks and the un-rotation in float64 (H from scipy).
Randomness of backward call c with seed S (QuartetLinear.swift): key_j = mix(S + (5c + j + 1)·γ),
d_i = −1 if u(key_0, i) < 1/2 else +1, key_1..key_4 seed the quantizers of dY·H_b, W_qᵀ·H_b,
dYᵀ·H_b, X_qᵀ·H_b. T and N are zero-padded to multiples of 32 for the backward rotations.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard as scipy_hadamard

import fp4swift as f4
from linear_reference import rel_err
from reference import _GAMMA, _mix, ref_quantize, uniforms
from test_quest import ref_quest

F32 = np.float32
TOL = 1e-5
H32 = scipy_hadamard(32).astype(np.float64) / np.sqrt(32)


def key(seed, call, j):
    z = (seed + (5 * call + j + 1) * int(_GAMMA)) % 2**64
    return int(_mix(np.array([z], dtype=np.uint64))[0])


def signs(seed, call):
    return np.where(uniforms(key(seed, call, 0), 32) < 0.5, -1.0, 1.0).astype(F32)


def pad32(a):
    """Zero columns up to the next multiple of 32."""
    c = a.shape[1]
    cp = -(-c // 32) * 32
    out = np.zeros((a.shape[0], cp), dtype=F32)
    out[:, :c] = a
    return out


def unrotate(g):
    """g·Hᵀ blockwise along the last axis, float64."""
    return (g.reshape(-1, 32) @ H32.T).reshape(g.shape)


class RefQuartet:
    def __init__(self, x, w, b):
        self.x_shape = np.shape(x)
        K = self.x_shape[-1]
        self.X = np.asarray(x, dtype=F32).reshape(-1, K)
        self.W = np.asarray(w, dtype=F32)
        self.b = b
        xq, _, self.mx, _ = ref_quest(f4.hadamard(self.X))
        wq, _, self.mw, _ = ref_quest(f4.hadamard(self.W))
        self.xq, self.wq = xq, wq  # float32, rotated basis

    def forward(self):
        y = self.xq.astype(np.float64) @ self.wq.astype(np.float64).T
        if self.b is not None:
            y = y + np.asarray(self.b, dtype=np.float64)
        return y.reshape(self.x_shape[:-1] + (self.W.shape[0],))

    def qb(self, a, d, seed):
        r = f4.hadamard(pad32(a), signs=d)
        return ref_quantize(r, fmt="e2m1", granularity="block(32)", scale_rule="absmax_div3",
                            rounding="stochastic", seed=seed).xhat.astype(np.float64)

    def backward(self, dy, seed, call):
        N = self.W.shape[0]
        D = np.asarray(dy, dtype=F32).reshape(-1, N)
        d = signs(seed, call)
        A = self.qb(D, d, key(seed, call, 1))
        B = self.qb(np.ascontiguousarray(self.wq.T), d, key(seed, call, 2))
        dx = unrotate((A @ B.T) * self.mx).reshape(self.x_shape)
        C = self.qb(np.ascontiguousarray(D.T), d, key(seed, call, 3))
        E = self.qb(np.ascontiguousarray(self.xq.T), d, key(seed, call, 4))
        dw = unrotate((C @ E.T) * self.mw)
        db = D.astype(np.float64).sum(axis=0) if self.b is not None else None
        return dx, dw, db


def make(rng, x_shape, N, bias=True):
    K = x_shape[-1]
    x = (rng.standard_t(4, size=x_shape)).astype(F32)
    w = (rng.standard_normal((N, K)) * 10.0 ** rng.uniform(-2, 0, (N, 1))).astype(F32)
    w[N // 2] = 0  # all-zero weight row: zero groups
    b = rng.standard_normal(N).astype(F32) if bias else None
    dy = rng.standard_normal(x_shape[:-1] + (N,)).astype(F32)
    return x, w, b, dy


@pytest.mark.parametrize("x_shape,N,bias", [((64, 64), 32, True), ((40, 96), 24, True), ((2, 5, 32), 7, False),
                                            ((1, 128), 33, True)])
@pytest.mark.parametrize("seed", [0, 12345])
def test_matches_reference(x_shape, N, bias, seed):
    rng = np.random.default_rng(len(x_shape) * 1000 + N + seed)
    x, w, b, dy = make(rng, x_shape, N, bias)
    r = f4.Recipe.get("quartet").replace(seed=seed)
    y, saved = f4.linear_forward(x, w, b, r)
    ref = RefQuartet(x, w, b)
    assert rel_err(y, ref.forward()) <= TOL
    # saved: X_q codes decode to the reference, the mask is the reference's
    T, K = ref.X.shape
    assert saved.nbytes == T * K // 2 + 4 * T * K // 32 + (T * K + 7) // 8
    np.testing.assert_array_equal(np.unpackbits(saved.x_mask, bitorder="little")[: T * K].astype(bool),
                                  ref.mx.reshape(-1))
    dx, dw, db = f4.linear_backward(dy, saved)
    dx_r, dw_r, db_r = ref.backward(dy, seed, saved.call)
    assert rel_err(dx, dx_r) <= TOL, rel_err(dx, dx_r)
    assert rel_err(dw, dw_r) <= TOL, rel_err(dw, dw_r)
    if bias:
        assert rel_err(db, db_r) <= TOL
    else:
        assert db is None


def test_signs_fresh_per_call_and_retained_backward_repeats():
    rng = np.random.default_rng(1)
    x, w, b, dy = make(rng, (32, 64), 32)
    y1, s1 = f4.linear_forward(x, w, b, "quartet")
    y2, s2 = f4.linear_forward(x, w, b, "quartet")
    np.testing.assert_array_equal(y1, y2)  # the forward is deterministic
    assert s2.call != s1.call
    g1 = f4.linear_backward(dy, s1, retain=True)
    g1b = f4.linear_backward(dy, s1)
    g2 = f4.linear_backward(dy, s2)
    np.testing.assert_array_equal(g1[0], g1b[0])
    np.testing.assert_array_equal(g1[1], g1b[1])
    assert not np.array_equal(g1[0], g2[0]) and not np.array_equal(g1[1], g2[1])
    assert not np.array_equal(signs(0, s1.call), signs(0, s2.call))
    with pytest.raises(f4.FP4StateError):
        f4.linear_backward(dy, s1)


def test_backward_is_unbiased_for_the_masked_gradient():
    """Averaged over calls, dX approaches ((dY·W_q) ⊙ m_x)·Hᵀ (in the rotated basis, W_q = QuEST(W·H)):
    the random rotations cancel and stochastic rounding is unbiased."""
    rng = np.random.default_rng(2)
    x, w, _, dy = make(rng, (32, 32), 32, bias=False)
    ref = RefQuartet(x, w, None)
    exact_dx = unrotate((dy.astype(np.float64) @ ref.wq.astype(np.float64)) * ref.mx)
    exact_dw = unrotate((dy.astype(np.float64).T @ ref.xq.astype(np.float64)) * ref.mw)
    n = 300
    sx = np.zeros_like(exact_dx)
    sw = np.zeros_like(exact_dw)
    for _ in range(n):
        _, saved = f4.linear_forward(x, w, None, "quartet")
        dx, dw, _ = f4.linear_backward(dy, saved)
        sx += dx
        sw += dw
    for mean, exact, last in ((sx / n, exact_dx, dx), (sw / n, exact_dw, dw)):
        single = np.abs(last - exact).mean()
        assert np.abs(mean - exact).mean() < 0.2 * single, (np.abs(mean - exact).mean(), single)


def test_recipe_data_and_bad_input():
    assert "quartet" in f4.recipes()
    r = f4.Recipe.get("quartet")
    assert r.kind == "quartet" and not r.occ and not r.dge
    assert (r.input.granularity, r.input.block, r.input.scale_rule) == ("block", 32, "quest")
    assert (r.gradient.scale_rule, r.gradient.rounding) == ("absmax_div3", "stochastic")
    with pytest.raises(ValueError, match="fixed"):
        r.replace(fmt="e1m2")
    with pytest.raises(ValueError):
        r.to_c()
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="multiple of 32"):
        f4.linear_forward(rng.standard_normal((4, 48)), rng.standard_normal((8, 48)), None, "quartet")
    x = np.ones((4, 32), F32)
    x[1, 2] = np.inf
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(x, np.ones((8, 32), F32), None, "quartet")
    w = np.ones((8, 32), F32)
    w[3, 3] = np.nan
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(np.ones((4, 32), F32), w, None, "quartet")
    # empty token batch
    y, saved = f4.linear_forward(np.zeros((0, 32), F32), np.ones((8, 32), F32), np.ones(8, F32), "quartet")
    assert y.shape == (0, 8)
    dx, dw, db = f4.linear_backward(np.zeros((0, 8), F32), saved)
    assert dx.shape == (0, 32) and np.all(dw == 0) and np.all(db == 0)


def test_torch_layer_runs_quartet():
    torch = pytest.importorskip("torch")
    f4t = pytest.importorskip("fp4swift.torch")
    torch.manual_seed(0)
    lin = f4t.FP4Linear(64, 32, recipe="quartet")
    x = torch.randn(8, 64, requires_grad=True)
    y = lin(x)
    ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0)
    assert cos > 0.9
    y.sum().backward()
    assert x.grad.shape == x.shape and lin.weight.grad.shape == lin.weight.shape
    assert torch.isfinite(x.grad).all() and torch.isfinite(lin.weight.grad).all()
