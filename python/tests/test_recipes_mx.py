"""The mxfp4 and nvfp4 linear recipes (numerics.md §6, "Other baselines") against float64 references.

The recipes are spelled out here independently of fp4swift.Recipe: quantized operands come
from reference.ref_quantize (the float32 quantizer written from numerics.md §2), the GEMMs are
float64. mxfp4: e2m1, e8m0 scales, 1x32 blocks along each GEMM's reduction dimension, RNE, STE:
forward X and W along K; dX = Q(dY)·Q(Wᵀ)ᵀ with dY and Wᵀ in blocks along N; dW = Q(dYᵀ)·Q(X_qᵀ)ᵀ
with both re-quantized in blocks along T (T zero-padded to a multiple of 32).
nvfp4: e2m1, two-level nvfp4 scales, 1x16 blocks on X, 16x16 tiles on W, RNE forward,
dY stochastically rounded (e2m1, nvfp4 scales, 1x16 blocks, the per-call seed of LinearSaved.gradient_seed) for dX = Q(dY)·W_q, STE;
the dW GEMM on operands rotated along T by a 16-point random Hadamard transform
H_b = diag(d)·H (d_i = −1 where u(seed 0, i) < ½; rotations by f4.hadamard, tested against
scipy in test_hadamard.py), T zero-padded to a multiple of 16, then re-quantized in 1x16
blocks along T: dW = Q_dY(dYᵀ·H_b) · Q_X(X_qᵀ·H_b)ᵀ.
Error measure: max|got − ref| / max|ref| ≤ 1e-5.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fp4swift as f4
from linear_reference import decode_fp4, rel_err, unpack_nibbles
from reference import ref_quantize, uniforms

F32 = np.float32
TOL = 1e-5

SPECS = {
    "mxfp4": dict(x=dict(granularity="block(32)", scale_rule="e8m0"),
                  w=dict(granularity="block(32)", scale_rule="e8m0"),
                  dy=dict(granularity="block(32)", scale_rule="e8m0"),
                  regroup=32),
    "nvfp4": dict(x=dict(granularity="block(16)", scale_rule="nvfp4"),
                  w=dict(granularity="block2d(16)", scale_rule="nvfp4"),
                  dy=dict(granularity="block(16)", scale_rule="nvfp4", rounding="stochastic", seed=0),
                  rht=16),
}


class RefMX:
    """Forward/backward of one call of a block-scaled recipe, float64 GEMMs."""

    def __init__(self, x, w, b, name):
        spec = SPECS[name]
        self.spec = spec
        self.x_shape = np.shape(x)
        K = self.x_shape[-1]
        X = np.asarray(x, dtype=F32).reshape(-1, K)
        W = np.asarray(w, dtype=F32)
        self.N = W.shape[0]
        self.b = b
        self.xq = ref_quantize(X, fmt="e2m1", **spec["x"])
        self.W_f32 = W
        self.wq = ref_quantize(W, fmt="e2m1", **spec["w"])
        self.x_op = self.xq.xhat.astype(np.float64)
        self.w_op = self.wq.xhat.astype(np.float64)

    def forward(self):
        y = self.x_op @ self.w_op.T
        if self.b is not None:
            y = y + np.asarray(self.b, dtype=np.float64)
        return y.reshape(self.x_shape[:-1] + (self.N,))

    def backward(self, dy, dy_seed=0):
        D = np.asarray(dy, dtype=F32).reshape(-1, self.N)
        dy_spec = None if self.spec["dy"] is None else dict(self.spec["dy"], seed=dy_seed)
        G = D if dy_spec is None else ref_quantize(D, fmt="e2m1", **dy_spec).xhat
        G = G.astype(np.float64)
        if self.spec.get("regroup"):
            # W grouped along N: quantize Wᵀ; dW on dYᵀ and X_qᵀ re-quantized along T.
            wt = ref_quantize(np.ascontiguousarray(self.W_f32.T), fmt="e2m1", **self.spec["w"]).xhat.astype(np.float64)
            dx = (G @ wt.T).reshape(self.x_shape)
            b = self.spec["regroup"]

            def regrouped(a, q):  # a [rows, T] -> Q(pad(a)) float64, blocks along T
                tp = -(-a.shape[1] // b) * b
                p = np.zeros((a.shape[0], tp), F32)
                p[:, : a.shape[1]] = a
                return ref_quantize(p, fmt="e2m1", **q).xhat.astype(np.float64)

            dw = regrouped(D.T, dy_spec) @ regrouped(self.xq.xhat.T, self.spec["x"]).T
            db = D.astype(np.float64).sum(axis=0) if self.b is not None else None
            return dx, dw, db
        dx = (G @ self.w_op).reshape(self.x_shape)
        if self.spec.get("rht"):
            b = self.spec["rht"]
            d = np.where(uniforms(0, b) < 0.5, -1.0, 1.0).astype(F32)

            def rotated(a, q):  # a [rows, T] -> Q(pad(a)·H_b) float64
                tp = -(-a.shape[1] // b) * b
                p = np.zeros((a.shape[0], tp), F32)
                p[:, : a.shape[1]] = a
                return ref_quantize(f4.hadamard(p, block=b, signs=d), fmt="e2m1", **q).xhat.astype(np.float64)

            dw = rotated(D.T, dy_spec) @ rotated(self.xq.xhat.T, self.spec["x"]).T
        else:
            dw = G.T @ self.x_op
        db = D.astype(np.float64).sum(axis=0) if self.b is not None else None
        return dx, dw, db


def make(rng, x_shape, N, bias=True):
    K = x_shape[-1]
    x = (rng.standard_t(3, size=x_shape) * rng.uniform(0.5, 2)).astype(F32)
    # per-row magnitudes spanning two decades, so block scales differ along rows and tiles
    w = (rng.standard_normal((N, K)) * 10.0 ** rng.uniform(-2, 0, (N, 1))).astype(F32)
    w[0, :16] = 0  # an all-zero block / part of a zero-scale tile
    x.reshape(-1, K)[0] = 0  # an all-zero token
    b = rng.standard_normal(N).astype(F32) if bias else None
    dy = rng.standard_normal(x_shape[:-1] + (N,)).astype(F32)
    return x, w, b, dy


def check(name, x, w, b, dy, what=""):
    y, saved = f4.linear_forward(x, w, b, name)
    ref = RefMX(x, w, b, name)
    e = rel_err(y, ref.forward())
    assert e <= TOL, f"{what} {name}: forward rel err {e:.3g}"
    # saved state: X_q as packed e2m1 codes that decode to the reference X_q (scales included)
    T, K = ref.xq.xhat.reshape(-1, np.shape(x)[-1]).shape
    codes = unpack_nibbles(saved.x_codes, T * K)
    np.testing.assert_array_equal(decode_fp4(codes, "e2m1"), decode_fp4(ref.xq.codes, "e2m1"))
    dx, dw, db = f4.linear_backward(dy, saved)
    dx_r, dw_r, db_r = ref.backward(dy, saved.gradient_seed)
    for got, want, lbl in ((dx, dx_r, "dx"), (dw, dw_r, "dw")):
        e = rel_err(got, want)
        assert e <= TOL, f"{what} {name}: {lbl} rel err {e:.3g}"
    if b is not None:
        assert rel_err(db, db_r) <= TOL
    else:
        assert db is None
    return y, dx, dw


def test_builtin_recipes_are_the_spec():
    names = f4.recipes()
    assert "mxfp4" in names and "nvfp4" in names
    m = f4.Recipe.get("mxfp4")
    for q in (m.input, m.weight):
        assert (q.fmt, q.granularity, q.block, q.scale_rule, q.rounding) == ("e2m1", "block", 32, "e8m0", "nearest_even")
    g = m.gradient
    assert (g.fmt, g.granularity, g.block, g.scale_rule, g.rounding) == ("e2m1", "block", 32, "e8m0", "nearest_even")
    assert m.backward_grouping == "reduction" and not m.occ and not m.dge
    n = f4.Recipe.get("nvfp4")
    assert (n.input.fmt, n.input.granularity, n.input.block, n.input.scale_rule, n.input.rounding) == \
        ("e2m1", "block", 16, "nvfp4", "nearest_even")
    assert (n.weight.fmt, n.weight.granularity, n.weight.block, n.weight.scale_rule, n.weight.rounding) == \
        ("e2m1", "block2d", 16, "nvfp4", "nearest_even")
    g = n.gradient
    assert (g.fmt, g.granularity, g.block, g.scale_rule, g.rounding) == ("e2m1", "block", 16, "nvfp4", "stochastic")
    assert not n.occ and not n.dge and n.wgrad_hadamard == 16 and m.wgrad_hadamard == 0
    assert "quartet" not in names or f4.Recipe.get("quartet").name == "quartet"


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("x_shape,N,bias", [((64, 96), 64, True), ((2, 24, 64), 32, False), ((1, 32), 32, True),
                                            ((45, 64), 96, True)])
def test_matches_reference(name, x_shape, N, bias):
    rng = np.random.default_rng(hash((name, x_shape, N)) % 2**32)
    x, w, b, dy = make(rng, x_shape, N, bias)
    check(name, x, w, b, dy, f"{x_shape}x{N}")


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
def test_empty_tokens(name):
    x = np.zeros((0, 64), F32)
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(F32)
    y, saved = f4.linear_forward(x, w, None, name)
    assert y.shape == (0, 32)
    dx, dw, db = f4.linear_backward(np.zeros((0, 32), F32), saved)
    assert dx.shape == (0, 64) and np.all(dw == 0)


def test_saved_scales_keep_their_stored_form():
    # mxfp4 saves e8m0 exponent bytes (4.25 bits per element), nvfp4 e4m3 bytes (4.5 bits).
    rng = np.random.default_rng(1)
    x, w, b, dy = make(rng, (16, 64), 32)
    _, saved = f4.linear_forward(x, w, b, "mxfp4")
    assert saved.x_scales.size == 0 and saved.x_scale_bytes.dtype == np.uint8
    s = np.ldexp(np.float32(1), saved.x_scale_bytes.astype(np.int32) - 127).astype(np.float32)
    ref = ref_quantize(x, fmt="e2m1", granularity="block(32)", scale_rule="e8m0")
    np.testing.assert_array_equal(s, ref.scales.scale)
    assert saved.nbytes * 8 == x.size * 4.25
    _, saved = f4.linear_forward(x, w, b, "nvfp4")
    ref = ref_quantize(x, fmt="e2m1", granularity="block(16)", scale_rule="nvfp4")
    np.testing.assert_array_equal(f4.decode(saved.x_scale_bytes, "e4m3"), ref.scales.scale)
    assert saved.nbytes * 8 == x.size * 4.5 and saved.x_scales.size == 0
    # Float rules keep float32 scales.
    _, saved = f4.linear_forward(x, w, b, "fp4-direct")
    assert saved.x_scale_bytes.size == 0 and saved.x_scales.dtype == np.float32


def test_nvfp4_gradient_is_stochastic_and_unbiased():
    """With the gradient seed varied, the mean of dX over draws approaches dY·W_q (unbiased SR)."""
    rng = np.random.default_rng(2)
    x, w, _, dy = make(rng, (32, 32), 16, bias=False)
    base = f4.Recipe.get("nvfp4")
    wq = ref_quantize(w, fmt="e2m1", granularity="block2d(16)", scale_rule="nvfp4").xhat.astype(np.float64)
    exact = dy.astype(np.float64) @ wq
    acc = np.zeros_like(exact)
    draws = 200
    outs = set()
    for seed in range(draws):
        r = dataclasses.replace(base, name="nvfp4-s", gradient=dataclasses.replace(base.gradient, seed=seed))
        _, saved = f4.linear_forward(x, w, None, r)
        dx, _, _ = f4.linear_backward(dy, saved)
        acc += dx
        outs.add(dx.tobytes())
    assert len(outs) > draws // 2  # the draws differ by seed
    mean = acc / draws
    # the SR error per element is at most one grid step; averaging 200 draws shrinks it ~14x
    single = np.abs(dx - exact).mean()
    assert np.abs(mean - exact).mean() < 0.25 * single


@pytest.mark.parametrize("name,K,N,match", [
    ("mxfp4", 48, 32, "multiple of 32"),
    ("mxfp4", 32, 48, "multiple of 32"),  # dY and Wᵀ are grouped along N in the backward
    ("nvfp4", 40, 32, "multiple"),
    ("nvfp4", 32, 24, "multiple"),  # W tiles are 16x16: N must be a multiple of 16
])
def test_shapes_that_do_not_divide_into_blocks(name, K, N, match):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, K)).astype(F32)
    w = rng.standard_normal((N, K)).astype(F32)
    with pytest.raises(ValueError, match=match):
        f4.linear_forward(x, w, None, name)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
def test_nonfinite_input_raises(name):
    x = np.ones((4, 32), F32)
    x[1, 3] = np.nan
    w = np.ones((16, 32), F32)
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(x, w, None, name)


def test_block_recipes_beat_direct_cast_on_outliers():
    """Block scales isolate an outlier: mxfp4 and nvfp4 forward errors are far below fp4-direct's."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 128)).astype(F32)
    x[::7, 5] *= 100
    w = rng.standard_normal((64, 128)).astype(F32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    err = {n: np.mean((f4.linear_forward(x, w, None, n)[0] - exact) ** 2) for n in ("fp4-direct", "mxfp4", "nvfp4")}
    assert err["mxfp4"] < 0.5 * err["fp4-direct"] and err["nvfp4"] < 0.5 * err["fp4-direct"], err


def test_nvfp4_wgrad_hadamard_is_a_recipe_switch():
    """wgrad_hadamard=0 gives the plain dW = Q(dY)ᵀ·X_q (checked against the reference with the
    transform left out); a block that is not a power of two is refused. (No accuracy claim: with
    outlier tokens, quantizing dYᵀ along T after the rotation measured worse than quantizing dY
    along N without it, relative MSE 0.033 vs 0.019 on a synthetic case.)"""
    rng = np.random.default_rng(5)
    x, w, b, dy = make(rng, (48, 32), 16)
    off = f4.Recipe.get("nvfp4").replace(wgrad_hadamard=0)
    _, saved = f4.linear_forward(x, w, b, off)
    _, dw, _ = f4.linear_backward(dy, saved)
    ref = RefMX(x, w, b, "nvfp4")
    ref.spec = dict(ref.spec, rht=0)
    assert rel_err(dw, ref.backward(dy, saved.gradient_seed)[1]) <= TOL
    _, saved = f4.linear_forward(x, w, b, "nvfp4")
    assert not np.array_equal(f4.linear_backward(dy, saved)[1], dw)
    with pytest.raises(ValueError, match="power of two"):
        f4.Recipe.get("nvfp4").replace(wgrad_hadamard=12)


def test_nvfp4_draws_are_fresh_per_call_and_repeat_for_a_retained_backward():
    """Each forward gets its own gradient seed (a call counter mixed into the recipe's seed), so
    consecutive training steps draw afresh; a retained state's second backward repeats its draws."""
    rng = np.random.default_rng(4)
    x, w, _, dy = make(rng, (32, 32), 16, bias=False)
    _, s1 = f4.linear_forward(x, w, None, "nvfp4")
    _, s2 = f4.linear_forward(x, w, None, "nvfp4")
    assert s1.gradient_seed != s2.gradient_seed
    a = f4.linear_backward(dy, s1, retain=True)
    again = f4.linear_backward(dy, s1)
    b = f4.linear_backward(dy, s2)
    assert np.array_equal(a[0], again[0]) and np.array_equal(a[1], again[1])
    assert not np.array_equal(a[0], b[0])
    # Deterministic recipes keep their seed.
    w32 = np.concatenate([w, w])  # mxfp4 groups dY along N in blocks of 32
    assert f4.linear_forward(x, w32, None, "mxfp4")[1].gradient_seed == 0
