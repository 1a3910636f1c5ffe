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


# --- gemm="packed": the three GEMMs on packed codes (numerics.md §11) -------------------------

U = 2.0 ** -24
PACKED_SHAPES = [((64, 64), 32), ((40, 96), 24), ((33, 64), 70), ((100, 160), 45), ((7, 32), 5), ((2, 5, 64), 33)]


def _quartet_pair(seed=0):
    r = f4.Recipe.get("quartet").replace(seed=seed)
    return r.replace(gemm="packed"), r.replace(gemm="simulated")


def _abs_unrotate(v):
    """v·|H| blockwise along the last axis: bounds |(e ⊙ m)·Hᵀ| for |e| ≤ v (|H_ij| = 1/√32)."""
    return (v.reshape(-1, 32) @ np.abs(H32)).reshape(v.shape)


def _gemm_bound(a, b, groups):
    """Per element of a·bᵀ (float64 operands): the packed bound of §11, (G + 5)·2⁻²⁴·Σ|a·b|, and
    the packed-vs-simulated bound, that plus sgemm's own R·2⁻²⁴·Σ|a·b| (R = reduction length)."""
    s = np.abs(a) @ np.abs(b).T
    return (groups + 5) * U * s, (groups + 5 + a.shape[1]) * U * s, s


def _packed_and_simulated(x, w, b, dy, seed=0):
    packed, simulated = _quartet_pair(seed)
    yp, sp = f4.linear_forward(x, w, b, packed)
    ys, ss = f4.linear_forward(x, w, b, simulated)
    saved_same = (sp.x_codes.tobytes() == ss.x_codes.tobytes() and sp.x_scales.tobytes() == ss.x_scales.tobytes()
                  and sp.x_mask.tobytes() == ss.x_mask.tobytes())
    ss.call = sp.call  # the same backward draws
    gp = f4.linear_backward(dy, sp)
    gs = f4.linear_backward(dy, ss)
    return (yp, *gp), (ys, *gs), saved_same, sp.call


@pytest.mark.parametrize("x_shape,N", PACKED_SHAPES)
def test_packed_gemms_multiply_the_simulated_operands(x_shape, N):
    """gemm="packed" multiplies exactly the quantized operands of gemm="simulated" (RefQuartet
    rebuilds them in float64; test_matches_reference checks them against the simulated layer):
    each GEMM is within the packed bound of §11 of their float64 product, and within that plus
    sgemm's own rounding of the simulated layer. T, N and K = 32·m cover multiples of 32 and
    not (zero padding of T and N in the backward)."""
    rng = np.random.default_rng(sum(x_shape) * 7 + N)
    x, w, b, dy = make(rng, x_shape, N)
    seed = 77
    (yp, dxp, dwp, dbp), (ys, dxs, dws, dbs), saved_same, call = _packed_and_simulated(x, w, b, dy, seed)
    assert saved_same  # X_q codes, scales and m_x do not depend on the GEMM mode
    assert dbp.tobytes() == dbs.tobytes()
    ref = RefQuartet(x, w, b)
    T, K = ref.X.shape
    # Forward: Y = X_q·W_qᵀ + b; two more roundings for the bias (before or after the product).
    xq, wq = ref.xq.astype(np.float64), ref.wq.astype(np.float64)
    tight, loose, s = _gemm_bound(xq, wq, K // 32)
    exact = xq @ wq.T + b
    bias = 2 * U * (s + np.abs(b))
    assert np.all(np.abs(yp.reshape(T, N) - exact) <= tight + bias)
    assert np.all(np.abs(yp.reshape(T, N).astype(np.float64) - ys.reshape(T, N)) <= loose + bias)
    # Backward operands (float64, exactly the simulated layer's): A [T, Np], B [K, Np], C [N, Tp], E [K, Tp].
    d = signs(seed, call)
    D = dy.reshape(T, N)
    A = ref.qb(D, d, key(seed, call, 1))
    B = ref.qb(np.ascontiguousarray(ref.wq.T), d, key(seed, call, 2))
    C = ref.qb(np.ascontiguousarray(D.T), d, key(seed, call, 3))
    E = ref.qb(np.ascontiguousarray(ref.xq.T), d, key(seed, call, 4))
    for (got, sim, a_op, b_op, mask) in ((dxp.reshape(T, K), dxs.reshape(T, K), A, B, ref.mx),
                                         (dwp, dws, C, E, ref.mw)):
        tight, loose, s = _gemm_bound(a_op, b_op, a_op.shape[1] // 32)
        g = (a_op @ b_op.T) * mask
        # The mask is exact; the un-rotation (5 butterfly stages and the 1/√32) rounds each of
        # the two results by at most 6·2⁻²⁴ of Σ|terms| (≤ |H|·(s ⊙ m)).
        rot = 6 * U * _abs_unrotate(s * mask)
        assert np.all(np.abs(got - unrotate(g)) <= _abs_unrotate(tight * mask) + rot)
        assert np.all(np.abs(got.astype(np.float64) - sim) <= _abs_unrotate(loose * mask) + 2 * rot)


def test_packed_is_thread_count_and_path_independent(monkeypatch):
    rng = np.random.default_rng(11)
    x, w, b, dy = make(rng, (70, 96), 40)
    packed, _ = _quartet_pair(5)

    def run():
        y, saved = f4.linear_forward(x, w, b, packed)
        saved.call = 1234
        return (y, *f4.linear_backward(dy, saved))

    before = f4.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            f4.set_num_threads(threads)
            for path in f4.gemm_paths():
                monkeypatch.setenv("FP4SWIFT_GEMM_ISA", path)
                outs.append(((threads, path), run()))
    finally:
        f4.set_num_threads(before)
    assert len(outs) >= 2
    for (key0, o) in outs[1:]:
        for u, v in zip(outs[0][1], o):
            assert u.tobytes() == v.tobytes(), key0


@pytest.mark.parametrize("gemm", ["packed", "simulated"])
def test_operand_kernels_are_path_independent(monkeypatch, gemm):
    """The operand kernels (the forward QuEST and the backward operands) run in AVX-512 C on the
    avx512vnni path and in Swift on the others: the same bits either way, for widths that are
    not multiples of 8, 16 or 32, block counts that are not multiples of 16, zero, -0, tiny
    and huge blocks of X and W, zero and tiny (scale-underflowing) gradient columns and wide
    dynamic range."""
    rng = np.random.default_rng(13)
    x, w, b, dy = make(rng, (75, 160), 45)
    x[5, 32:64] = 0
    x[6, :32] = -0.0
    x[7, 64:96] *= np.float32(1e-40)
    x[8] *= np.float32(1e30)
    x[9, 96:128] = 3
    w[3, :32] = 0
    w[4, 32:64] *= np.float32(1e-41)
    w[5, 128:] *= np.float32(1e25)
    dy[:, 3] = 0
    dy[:40, 7] *= np.float32(1e-42)
    dy[:, 11] *= np.float32(1e30)
    dy[50:, 20:30] = -0.0
    r = f4.Recipe.get("quartet").replace(seed=7, gemm=gemm)

    def run():
        y, saved = f4.linear_forward(x, w, b, r)
        saved.call = 99
        return (y, *f4.linear_backward(dy, saved))

    outs = []
    for path in f4.gemm_paths():
        monkeypatch.setenv("FP4SWIFT_GEMM_ISA", path)
        outs.append((path, run()))
    for path, o in outs[1:]:
        for u, v in zip(outs[0][1], o):
            assert u.view(np.uint32).tobytes() == v.view(np.uint32).tobytes(), path


def test_packed_backward_with_nan_gradient_matches_simulated():
    """NaN/inf in dY cannot be coded: the packed backward runs simulated and propagates them."""
    rng = np.random.default_rng(12)
    x, w, b, dy = make(rng, (40, 64), 48)
    dy[3, 5] = np.nan
    dy[20, 40] = np.inf
    (yp, dxp, dwp, dbp), (ys, dxs, dws, dbs), _, _ = _packed_and_simulated(x, w, b, dy)
    for p, s in ((dxp, dxs), (dwp, dws), (dbp, dbs)):
        assert p.tobytes() == s.tobytes()
    assert np.isnan(dxp).any() and np.isnan(dwp).any()


def test_packed_quartet_bad_input_and_empty_batch():
    packed, _ = _quartet_pair()
    x = np.ones((4, 32), F32)
    x[1, 2] = np.inf
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(x, np.ones((8, 32), F32), None, packed)
    w = np.ones((8, 32), F32)
    w[3, 3] = np.nan
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(np.ones((4, 32), F32), w, None, packed)
    y, saved = f4.linear_forward(np.zeros((0, 32), F32), np.ones((8, 32), F32), np.ones(8, F32), packed)
    assert y.shape == (0, 8)
    dx, dw, db = f4.linear_backward(np.zeros((0, 8), F32), saved)
    assert dx.shape == (0, 32) and np.all(dw == 0) and np.all(db == 0)
