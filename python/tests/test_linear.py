"""The FP4 linear layer (numerics.md §6) against a float64 numpy reference of §4–6.

linear_reference.RefLinear builds X_q and W_q with the float32 reference quantizer of
reference.py, computes OCC thresholds by a full sort, and does every GEMM and the DGE
factor in float64 from the spec's formulas. The recipe is spelled out independently
(LinearConfig), so the tests also check that fp4swift.Recipe means what the spec says.
Error measure: max|got − ref| / max|ref| ≤ 1e-5 for y, dx, dw and db.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import fp4swift as f4
from linear_reference import (
    FP4_DIRECT,
    FP32,
    WANG2025,
    LinearConfig,
    RefLinear,
    decode_fp4,
    occ_indices,
    ref_dge_derivative,
    rel_err,
    unpack_nibbles,
)
from reference import pack_nibbles, ref_quantize

F32 = np.float32
TOL = 1e-5


def make_layer(rng, x_shape, N, bias=True, zero_rows=True):
    """Heavy-tailed activations (so OCC clamps something), weights with per-row magnitudes,
    an all-zero weight row and an all-zero token (zero scale groups), and dY."""
    K = x_shape[-1]
    x = (rng.standard_t(3, size=x_shape) * rng.uniform(0.5, 2)).astype(F32)
    w = (rng.standard_normal((N, K)) * 10.0 ** rng.uniform(-2, 0, (N, 1))).astype(F32)
    if zero_rows:
        w[N // 2] = 0
        x.reshape(-1, K)[0] = 0
    b = rng.standard_normal(N).astype(F32) if bias else None
    dy = rng.standard_normal(x_shape[:-1] + (N,)).astype(F32)
    return x, w, b, dy


def check_layer(x, w, b, dy, recipe, cfg, what="", tol=TOL):
    """Forward + backward through fp4swift, compared with RefLinear; returns both."""
    y, saved = f4.linear_forward(x, w, b, recipe)
    ref = RefLinear(x, w, b, cfg)
    y_ref = ref.forward()
    assert y.dtype == np.float32 and y.shape == y_ref.shape, f"{what}: y {y.shape} vs {y_ref.shape}"
    e = rel_err(y, y_ref)
    assert e <= tol, f"{what}: forward rel err {e:.3g}"
    dx, dw, db = f4.linear_backward(dy, saved)
    dx_r, dw_r, db_r = ref.backward(dy)
    assert dx.shape == np.shape(x) and dw.shape == np.shape(w)
    assert dx.dtype == np.float32 and dw.dtype == np.float32
    for name, got, want in (("dx", dx, dx_r), ("dw", dw, dw_r)):
        e = rel_err(got, want)
        assert e <= tol, f"{what}: {name} rel err {e:.3g}"
    if b is None:
        assert db is None
    else:
        assert db.shape == (w.shape[0],) and db.dtype == np.float32
        assert rel_err(db, db_r) <= tol, f"{what}: db"
    return (y, dx, dw, db), ref


# ---------------------------------------------------------------------------
# Recipes as data
# ---------------------------------------------------------------------------


def test_builtin_recipes_match_the_spec():
    names = f4.recipes()
    for n in ("fp32", "fp4-direct", "wang2025"):
        assert n in names
    r = f4.Recipe.get("wang2025")
    for q in (r.input, r.weight):
        assert (q.fmt, q.granularity, q.scale_rule, q.rounding) == ("e2m1", "row", "absmax", "nearest_even")
    assert r.gradient is None and not r.grad_fp8
    assert (r.occ, r.alpha, r.occ_per, r.compensate) == (True, 0.99, "tensor", True)
    assert (r.dge, r.k, r.clamp) == (True, 5.0, 3.0)
    d = f4.Recipe.get("fp4-direct")
    for q in (d.input, d.weight):
        assert (q.fmt, q.granularity, q.scale_rule, q.rounding) == ("e2m1", "tensor", "absmax", "nearest_even")
    assert not d.occ and not d.dge and d.gradient is None
    p = f4.Recipe.get("fp32")
    assert p.input is None and p.weight is None and p.gradient is None and not p.occ and not p.dge
    assert f4.Recipe.get(r) is r


def test_replace_shortcuts():
    r = f4.Recipe.get("wang2025")
    e = r.replace(fmt="e1m2")
    assert e.input.fmt == e.weight.fmt == "e1m2" and e.input.granularity == "row"
    t = r.replace(granularity="tensor")
    assert t.input.granularity == t.weight.granularity == "tensor" and t.input.fmt == "e2m1"
    g = r.replace(grad_fp8=True)
    assert g.grad_fp8 and (g.gradient.fmt, g.gradient.granularity, g.gradient.scale_rule) == ("e5m2", "tensor", "pow2")
    assert not g.replace(grad_fp8=False).grad_fp8
    a = r.replace(alpha=0.9, occ_per="row", compensate=False, dge=False, k=2.0)
    assert (a.alpha, a.occ_per, a.compensate, a.dge, a.k) == (0.9, "row", False, False, 2.0)
    # The built-in is unchanged (frozen data).
    assert f4.Recipe.get("wang2025").alpha == 0.99 and f4.Recipe.get("wang2025").input.fmt == "e2m1"


# ---------------------------------------------------------------------------
# Every switch combination against the reference
# ---------------------------------------------------------------------------

SWITCHES = list(itertools.product([True, False], [True, False], [True, False], ["tensor", "row"],
                                  ["row", "tensor"], [False, True]))


def switch_id(s):
    dge, occ, comp, per, gran, fp8 = s
    return (f"dge{int(dge)}-occ{int(occ)}-comp{int(comp)}-{per}-{gran}-fp8{int(fp8)}")


@pytest.mark.parametrize("switches", SWITCHES, ids=[switch_id(s) for s in SWITCHES])
def test_wang2025_switch_matrix(rng, switches):
    dge, occ, comp, per, gran, fp8 = switches
    recipe = f4.Recipe.get("wang2025").replace(dge=dge, occ=occ, compensate=comp, occ_per=per,
                                                granularity=gran, grad_fp8=fp8)
    cfg = LinearConfig(x_gran=gran, w_gran=gran, dge=dge, occ=occ, compensate=comp, occ_per=per, grad_fp8=fp8)
    x, w, b, dy = make_layer(rng, (3, 10, 40), 24)
    check_layer(x, w, b, dy, recipe, cfg, switch_id(switches))


@pytest.mark.parametrize("alpha", [0.9, 0.97, 0.99, 0.999, 1.0, 0.51])
@pytest.mark.parametrize("per", ["tensor", "row"])
def test_wang2025_alpha(rng, alpha, per):
    recipe = f4.Recipe.get("wang2025").replace(alpha=alpha, occ_per=per)
    x, w, b, dy = make_layer(rng, (64, 48), 20)
    (_, _, _, _), ref = check_layer(x, w, b, dy, recipe, dataclasses.replace(WANG2025, alpha=alpha, occ_per=per),
                                    f"alpha={alpha} {per}")
    # Where the index formula leaves values outside [lo, hi], the reference really clamped
    # something, so the compensation path is exercised.
    n = 48 if per == "row" else 64 * 48
    lo_i, hi_i = occ_indices(n, alpha)
    assert (np.count_nonzero(ref.delta) > 0) == (lo_i > 0 or hi_i < n - 1)


@pytest.mark.parametrize("fmt", ["e2m1", "e1m2", "e3m0"])
@pytest.mark.parametrize("gran", ["row", "tensor"])
@pytest.mark.parametrize("fp8", [False, True])
def test_wang2025_formats(rng, fmt, gran, fp8):
    recipe = f4.Recipe.get("wang2025").replace(fmt=fmt, granularity=gran, grad_fp8=fp8)
    cfg = dataclasses.replace(WANG2025, fmt=fmt, x_gran=gran, w_gran=gran, grad_fp8=fp8)
    x, w, b, dy = make_layer(rng, (2, 16, 32), 12)
    check_layer(x, w, b, dy, recipe, cfg, f"{fmt} {gran} fp8={fp8}")


@pytest.mark.parametrize("k,clamp", [(2.0, 3.0), (5.0, 1.5), (10.0, 3.0), (5.0, 100.0), (1.0, 3.0), (0.5, 3.0)])
def test_wang2025_dge_parameters(rng, k, clamp):
    recipe = f4.Recipe.get("wang2025").replace(k=k, clamp=clamp)
    x, w, b, dy = make_layer(rng, (40, 24), 16)
    check_layer(x, w, b, dy, recipe, dataclasses.replace(WANG2025, k=k, clamp=clamp), f"k={k} C={clamp}")


@pytest.mark.parametrize("fp8", [False, True])
def test_fp4_direct(rng, fp8):
    r = f4.Recipe.get("fp4-direct")
    x, w, b, dy = make_layer(rng, (4, 8, 32), 16)
    check_layer(x, w, b, dy, r.replace(grad_fp8=fp8) if fp8 else "fp4-direct",
                dataclasses.replace(FP4_DIRECT, grad_fp8=fp8), f"fp4-direct fp8={fp8}")


def test_fp4_direct_e1m2_row(rng):
    r = f4.Recipe.get("fp4-direct").replace(fmt="e1m2", granularity="row")
    x, w, b, dy = make_layer(rng, (20, 32), 8)
    check_layer(x, w, b, dy, r, dataclasses.replace(FP4_DIRECT, fmt="e1m2", x_gran="row", w_gran="row"))


def test_fp32_is_the_plain_layer(rng):
    x, w, b, dy = make_layer(rng, (3, 7, 33), 19)
    (y, dx, dw, db), _ = check_layer(x, w, b, dy, "fp32", FP32, "fp32")
    X = x.reshape(-1, 33).astype(np.float64)
    D = dy.reshape(-1, 19).astype(np.float64)
    W = w.astype(np.float64)
    assert rel_err(y, (X @ W.T + b).reshape(3, 7, 19)) <= TOL
    assert rel_err(dx, (D @ W).reshape(x.shape)) <= TOL
    assert rel_err(dw, D.T @ X) <= TOL
    np.testing.assert_allclose(db, D.sum(0), rtol=1e-5, atol=1e-5)


def test_fp32_finite_difference_gradient(rng):
    """fp32 gradients are the true gradients of L = Σ y·dy (float64 central differences
    of the library's forward; the loss is bilinear, so the difference is exact up to
    float32 rounding of y)."""
    x, w, b, dy = make_layer(rng, (5, 6), 4, zero_rows=False)
    x = x.astype(np.float64)
    _, saved = f4.linear_forward(x, w, b, "fp32")
    dx, dw, db = f4.linear_backward(dy, saved)

    def loss(xx, ww, bb):
        return float(np.sum(f4.linear_forward(xx, ww, bb, "fp32")[0].astype(np.float64) * dy))

    h = 1e-2
    for (i, j) in [(0, 0), (2, 3), (4, 5)]:
        xp, xm = x.copy(), x.copy()
        xp[i, j] += h
        xm[i, j] -= h
        assert abs((loss(xp, w, b) - loss(xm, w, b)) / (2 * h) - dx[i, j]) < 1e-3 * max(1, abs(dx[i, j]))
    for (i, j) in [(0, 0), (3, 5), (1, 2)]:
        wp, wm = w.astype(np.float64), w.astype(np.float64)
        wp[i, j] += h
        wm[i, j] -= h
        assert abs((loss(x, wp, b) - loss(x, wm, b)) / (2 * h) - dw[i, j]) < 1e-3 * max(1, abs(dw[i, j]))


# ---------------------------------------------------------------------------
# Properties of single switches
# ---------------------------------------------------------------------------


def test_dge_off_is_straight_through_and_dge_on_is_the_factor(rng):
    x, w, b, dy = make_layer(rng, (32, 40), 16)
    base = f4.Recipe.get("wang2025")
    _, s_off = f4.linear_forward(x, w, b, base.replace(dge=False))
    dx_off, dw_off, db_off = f4.linear_backward(dy, s_off)
    _, s_on = f4.linear_forward(x, w, b, base)
    dx_on, dw_on, db_on = f4.linear_backward(dy, s_on)
    ref = RefLinear(x, w, b, WANG2025)
    # STE: dW = dYᵀ·(X_q + ΔX), no factor.
    ste = dy.astype(np.float64).T @ ref.x_op
    assert rel_err(dw_off, ste) <= TOL
    # DGE only rescales dW elementwise by f'(W / s_w); dX and db do not change.
    np.testing.assert_array_equal(dx_on, dx_off)
    np.testing.assert_array_equal(db_on, db_off)
    fac = ref.dge_factor()
    assert rel_err(dw_on, dw_off.astype(np.float64) * fac) <= TOL
    assert not np.allclose(dw_on, dw_off)
    # The zero weight row: v = 0 is a grid point, f' = 1/k.
    z = w.shape[0] // 2
    np.testing.assert_allclose(dw_on[z], dw_off[z] / 5, rtol=1e-6, atol=1e-12)
    # The factor lies in [0, C] and equals 1/k on grid points.
    assert fac.min() >= 0 and fac.max() <= 3


def test_compensation_and_occ_switches_change_only_what_they_should(rng):
    x, w, b, dy = make_layer(rng, (48, 32), 8)
    base = f4.Recipe.get("wang2025")
    y_comp, _ = f4.linear_forward(x, w, b, base)
    y_drop, _ = f4.linear_forward(x, w, b, base.replace(compensate=False))
    y_none, _ = f4.linear_forward(x, w, b, base.replace(occ=False))
    ref = RefLinear(x, w, b, WANG2025)
    # y_comp − y_drop = ΔX·W_qᵀ exactly (float64 reference).
    assert rel_err(y_comp.astype(np.float64) - y_drop, ref.delta.astype(np.float64) @ ref.w_op.T) <= 1e-4
    assert not np.allclose(y_comp, y_drop)
    assert not np.allclose(y_comp, y_none)
    # Compensation keeps the outliers: closer to the unquantized X·W_qᵀ than dropping them.
    exact = x.astype(np.float64) @ ref.w_op.T + b
    assert np.linalg.norm(y_comp - exact) < np.linalg.norm(y_drop - exact)


def test_grad_fp8_quantizes_dy_before_both_gemms(rng):
    x, w, b, dy = make_layer(rng, (16, 24), 8)
    dy = (dy * 1e-3).astype(F32)
    r = f4.Recipe.get("wang2025").replace(grad_fp8=True)
    _, saved = f4.linear_forward(x, w, b, r)
    dx, dw, db = f4.linear_backward(dy, saved)
    ref = RefLinear(x, w, b, dataclasses.replace(WANG2025, grad_fp8=True))
    g = ref_quantize(dy, fmt="e5m2", granularity="tensor", scale_rule="pow2").xhat.astype(np.float64)
    assert not np.array_equal(g, dy)  # e5m2 really rounds
    assert rel_err(dx, g @ ref.w_op) <= TOL
    assert rel_err(dw, (g.T @ ref.x_op) * ref.dge_factor()) <= TOL
    # db is Σ_T dY of the unquantized dY (not a GEMM).
    assert rel_err(db, dy.astype(np.float64).sum(0)) <= TOL


@pytest.mark.parametrize("recipe", ["wang2025", "fp4-direct", "fp32"])
def test_db_and_no_bias(rng, recipe):
    x, w, b, dy = make_layer(rng, (2, 5, 16), 6)
    y_b, s_b = f4.linear_forward(x, w, b, recipe)
    y_n, s_n = f4.linear_forward(x, w, None, recipe)
    np.testing.assert_allclose(y_b - b, y_n, rtol=0, atol=1e-5 * np.abs(y_b).max())
    dx_b, dw_b, db = f4.linear_backward(dy, s_b)
    dx_n, dw_n, db_n = f4.linear_backward(dy, s_n)
    assert db_n is None
    np.testing.assert_allclose(db, dy.reshape(-1, 6).astype(np.float64).sum(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dx_b, dx_n)
    np.testing.assert_array_equal(dw_b, dw_n)
    cfg = {"wang2025": WANG2025, "fp4-direct": FP4_DIRECT, "fp32": FP32}[recipe]
    check_layer(x, w, None, dy, recipe, cfg, f"{recipe} no bias")


@pytest.mark.parametrize("shape", [(24,), (1, 24), (9, 24), (2, 3, 24), (2, 2, 3, 24)])
@pytest.mark.parametrize("recipe", ["wang2025", "fp4-direct", "fp32"])
def test_leading_batch_dims(rng, shape, recipe):
    cfg = {"wang2025": WANG2025, "fp4-direct": FP4_DIRECT, "fp32": FP32}[recipe]
    x, w, b, dy = make_layer(rng, shape, 10, zero_rows=False)
    (y, dx, dw, db), _ = check_layer(x, w, b, dy, recipe, cfg, f"{recipe} {shape}")
    assert y.shape == shape[:-1] + (10,) and dx.shape == shape
    # Same as the flattened [T, K] call.
    y2, s2 = f4.linear_forward(x.reshape(-1, 24), w, b, recipe)
    np.testing.assert_array_equal(y.reshape(-1, 10), y2)
    dx2, dw2, db2 = f4.linear_backward(dy.reshape(-1, 10), s2)
    np.testing.assert_array_equal(dx.reshape(-1, 24), dx2)
    np.testing.assert_array_equal(dw, dw2)


def test_float64_and_noncontiguous_inputs(rng):
    x, w, b, dy = make_layer(rng, (12, 40), 8)
    y, s = f4.linear_forward(x, w, b, "wang2025")
    d = f4.linear_backward(dy, s)
    xt = np.ascontiguousarray(x.T).T  # same values, Fortran order
    wt = np.ascontiguousarray(w.T).T
    y2, s2 = f4.linear_forward(xt.astype(np.float64), wt, b.astype(np.float64), "wang2025")
    d2 = f4.linear_backward(dy[:, ::1].astype(np.float64), s2)
    np.testing.assert_array_equal(y, y2)
    for a, c in zip(d, d2):
        np.testing.assert_array_equal(a, c)
    big = np.zeros((12, 80), F32)
    big[:, ::2] = x
    y3, _ = f4.linear_forward(big[:, ::2], w, b, "wang2025")
    np.testing.assert_array_equal(y, y3)


def test_inputs_are_not_modified(rng):
    x, w, b, dy = make_layer(rng, (16, 32), 8)
    copies = [a.copy() for a in (x, w, b, dy)]
    _, s = f4.linear_forward(x, w, b, "wang2025")
    f4.linear_backward(dy, s)
    for a, c in zip((x, w, b, dy), copies):
        np.testing.assert_array_equal(a, c)


def test_thread_count_does_not_change_results(rng, restore_threads):
    x, w, b, dy = make_layer(rng, (96, 64), 32)
    outs = []
    for n in (1, 3, 8):
        f4.set_num_threads(n)
        y, s = f4.linear_forward(x, w, b, "wang2025")
        outs.append((y,) + tuple(f4.linear_backward(dy, s)))
    for o in outs[1:]:
        for a, c in zip(outs[0], o):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("recipe", ["wang2025", "fp4-direct", "fp32"])
def test_empty_tokens(rng, recipe):
    x = np.zeros((0, 16), F32)
    w = rng.standard_normal((4, 16)).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    y, s = f4.linear_forward(x, w, b, recipe)
    assert y.shape == (0, 4)
    dx, dw, db = f4.linear_backward(np.zeros((0, 4), F32), s)
    assert dx.shape == (0, 16)
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)
    # K = 0: y = b, dw is [N, 0], db = Σ dy; N = 0: y is [T, 0], dx = 0.
    y, s = f4.linear_forward(np.zeros((5, 0), F32), np.zeros((4, 0), F32), b, recipe)
    np.testing.assert_array_equal(y, np.tile(b, (5, 1)))
    dy = rng.standard_normal((5, 4)).astype(F32)
    dx, dw, db = f4.linear_backward(dy, s)
    assert dx.shape == (5, 0) and dw.shape == (4, 0)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(0), rtol=1e-6)
    y, s = f4.linear_forward(rng.standard_normal((5, 16)).astype(F32), np.zeros((0, 16), F32), None, recipe)
    assert y.shape == (5, 0)
    dx, dw, db = f4.linear_backward(np.zeros((5, 0), F32), s)
    np.testing.assert_array_equal(dx, np.zeros((5, 16)))
    assert dw.shape == (0, 16) and db is None


# ---------------------------------------------------------------------------
# Saved state
# ---------------------------------------------------------------------------


def test_saved_state_is_small_and_holds_the_codes_of_x_q(rng):
    T, K, N = 256, 512, 64
    x, w, b, dy = make_layer(rng, (T, K), N)
    y, saved = f4.linear_forward(x, w, b, "wang2025")
    ref = RefLinear(x, w, b, WANG2025)
    assert saved.nbytes <= 0.2 * x.nbytes, f"saved {saved.nbytes} B vs X {x.nbytes} B"
    assert saved.x is None  # never a float32 copy of X
    # Codes: packed X_q codes of the clamped X, element 2i in the low nibble.
    assert saved.x_codes.dtype == np.uint8 and saved.x_codes.size == (T * K + 1) // 2
    np.testing.assert_array_equal(saved.x_codes, pack_nibbles(ref.xq.codes))
    codes = unpack_nibbles(saved.x_codes, T * K).reshape(T, K)
    assert saved.x_scales.shape == (T,)  # one per token
    np.testing.assert_array_equal(saved.x_scales, ref.xq.scales.scale)
    xq = decode_fp4(codes, "e2m1") * saved.x_scales.astype(np.float64)[:, None]
    np.testing.assert_array_equal(xq.astype(F32), ref.xq.xhat)
    # The residual is ΔX (about 2(1 − α)·T·K entries).
    res = saved.residual
    assert res is not None and saved.residual_nnz == res.nnz == np.count_nonzero(ref.delta)
    np.testing.assert_array_equal(res.toarray(), ref.delta)
    assert 0.5 * 0.02 * T * K <= res.nnz <= 0.02 * T * K + 2
    # nbytes adds up: codes + scales + CSR (indptr, int32 indices, float32 values).
    assert saved.nbytes == saved.x_codes.nbytes + saved.x_scales.nbytes + (T + 1) * 8 + res.nnz * 8
    f4.linear_backward(dy, saved)
    assert saved.nbytes == 0


@pytest.mark.parametrize("fmt", ["e1m2", "e3m0"])
def test_saved_codes_other_formats_and_tensor_scale(rng, fmt):
    x, w, b, dy = make_layer(rng, (7, 9), 5)  # odd T·K: the last high nibble is padding
    r = f4.Recipe.get("wang2025").replace(fmt=fmt, granularity="tensor", compensate=False)
    _, saved = f4.linear_forward(x, w, b, r)
    ref = RefLinear(x, w, b, dataclasses.replace(WANG2025, fmt=fmt, x_gran="tensor", w_gran="tensor", compensate=False))
    np.testing.assert_array_equal(saved.x_codes, pack_nibbles(ref.xq.codes))
    assert saved.x_codes[-1] >> 4 == 0
    assert saved.x_scales.shape == (1,)
    xq = decode_fp4(unpack_nibbles(saved.x_codes, 63), fmt).reshape(7, 9) * float(saved.x_scales[0])
    np.testing.assert_array_equal(xq.astype(F32), ref.xq.xhat)
    assert saved.residual is None and saved.residual_nnz == 0


def test_fp32_saved_state_references_x(rng):
    x, w, b, dy = make_layer(rng, (6, 8), 3)
    _, saved = f4.linear_forward(x, w, b, "fp32")
    assert saved.nbytes == x.nbytes
    _, saved = f4.linear_forward(x, w, b, "fp4-direct")
    assert saved.nbytes == (6 * 8 + 1) // 2 + 4  # codes + one tensor scale


def test_backward_twice_and_retain(rng):
    x, w, b, dy = make_layer(rng, (10, 16), 6)
    _, saved = f4.linear_forward(x, w, b, "wang2025")
    r1 = f4.linear_backward(dy, saved, retain=True)
    r2 = f4.linear_backward(dy, saved, retain=True)
    r3 = f4.linear_backward(dy, saved)  # releases
    for a, c, d in zip(r1, r2, r3):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
    with pytest.raises(f4.FP4StateError):
        f4.linear_backward(dy, saved)
    with pytest.raises(f4.FP4StateError):
        f4.linear_backward(dy, saved, retain=True)
    for recipe in ("fp32", "fp4-direct"):
        _, s = f4.linear_forward(x, w, b, recipe)
        f4.linear_backward(dy, s)
        with pytest.raises(f4.FP4StateError):
            f4.linear_backward(dy, s)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["wang2025", "fp4-direct", "fp32"])
def test_shape_mismatches(rng, recipe):
    x, w, b, dy = make_layer(rng, (4, 8), 3)
    bad_forward = [
        (x, np.ones((3, 7), F32), b),  # K mismatch
        (x, np.ones(8, F32), None),  # 1-D weight
        (x, np.ones((1, 3, 8), F32), None),  # 3-D weight
        (x, w, np.ones(4, F32)),  # bias length
        (x, w, np.ones((1, 3), F32)),  # bias 2-D
        (x, w, np.ones((), F32)),  # bias 0-d
        (np.float32(1.0), w, b),  # 0-d x
        (x.T.copy(), w, b),  # [K, T] instead of [T, K]
    ]
    for xx, ww, bb in bad_forward:
        with pytest.raises(ValueError):
            f4.linear_forward(xx, ww, bb, recipe)
    _, saved = f4.linear_forward(x, w, b, recipe)
    for bad_dy in (np.ones((4, 4), F32), np.ones((5, 3), F32), np.ones(12, F32), np.ones((1, 4, 3), F32),
                   np.ones((3, 4), F32)):
        with pytest.raises(ValueError):
            f4.linear_backward(bad_dy, saved, retain=True)
    # A failed call leaves the state usable.
    dx, dw, db = f4.linear_backward(dy, saved)
    assert dx.shape == (4, 8)


def test_saved_state_from_another_layer(rng):
    xa, wa, ba, dya = make_layer(rng, (5, 8), 4)
    xb, wb, bb, dyb = make_layer(rng, (5, 12), 6)
    _, sa = f4.linear_forward(xa, wa, ba, "wang2025")
    _, sb = f4.linear_forward(xb, wb, bb, "wang2025")
    with pytest.raises(ValueError):
        f4.linear_backward(dyb, sa, retain=True)  # dy of layer B, state of layer A
    with pytest.raises(ValueError):
        f4.linear_backward(dya, sb, retain=True)
    for bad in (None, (1, 2), "saved", dya):
        with pytest.raises(TypeError):
            f4.linear_backward(dya, bad)
    f4.linear_backward(dya, sa)
    f4.linear_backward(dyb, sb)


@pytest.mark.parametrize("k", [0, -1, -0.0, np.nan])
def test_bad_k(k):
    with pytest.raises(ValueError):
        f4.Recipe.get("wang2025").replace(k=k)


@pytest.mark.parametrize("alpha", [0.5, 1.01, -1, 0, np.nan])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError):
        f4.Recipe.get("wang2025").replace(alpha=alpha)


@pytest.mark.parametrize("field,value", [("alpha", 0.5), ("alpha", 1.01), ("alpha", -1.0), ("k", 0.0), ("k", -2.0),
                                         ("clamp", 0.0)])
def test_unvalidated_recipe_is_rejected_by_the_library(rng, field, value):
    """A Recipe built around validate() (dataclasses.replace) still fails cleanly: the
    forward raises ValueError instead of computing or crashing."""
    r = dataclasses.replace(f4.Recipe.get("wang2025"), **{field: value})
    x, w, b, _ = make_layer(rng, (4, 8), 3)
    with pytest.raises(ValueError):
        f4.linear_forward(x, w, b, r)


def test_inconsistent_recipes():
    with pytest.raises(ValueError):
        f4.Recipe.get("fp32").replace(occ=True)  # OCC needs a quantized input
    with pytest.raises(ValueError):
        f4.Recipe.get("fp32").replace(dge=True)  # DGE needs a quantized weight
    with pytest.raises(ValueError):
        f4.Recipe.get("wang2025").replace(occ_per="column")
    with pytest.raises(ValueError):
        f4.Recipe.get("wang2025").replace(fmt="e9m9")
    with pytest.raises(ValueError):
        f4.Recipe.get("wang2025").replace(fmt="e4m3")  # DGE is for FP4 grids


@pytest.mark.parametrize("name", ["nope", "WANG2025", "", "fp16"])
def test_unknown_recipe_name(rng, name):
    x, w, b, _ = make_layer(rng, (4, 8), 3)
    with pytest.raises(ValueError):
        f4.Recipe.get(name)
    with pytest.raises(ValueError):
        f4.linear_forward(x, w, b, name)


def test_recipe_of_wrong_type(rng):
    x, w, b, _ = make_layer(rng, (4, 8), 3)
    for r in (None, 3, {"name": "fp32"}):
        with pytest.raises(TypeError):
            f4.linear_forward(x, w, b, r)


BAD_DTYPES = [np.int32, np.int64, np.uint8, bool, np.complex64, object]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
def test_wrong_dtypes(rng, dtype):
    x, w, b, dy = make_layer(rng, (4, 8), 3)
    for args in ((x.astype(dtype), w, b), (x, w.astype(dtype), b), (x, w, b.astype(dtype))):
        with pytest.raises(TypeError):
            f4.linear_forward(*args, "wang2025")
    _, s = f4.linear_forward(x, w, b, "wang2025")
    with pytest.raises(TypeError):
        f4.linear_backward(dy.astype(dtype), s, retain=True)
    with pytest.raises(TypeError):
        f4.linear_forward(np.array([["a"] * 8] * 4), w, b, "fp32")


@pytest.mark.parametrize("recipe", ["wang2025", "fp4-direct"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_under_quantized_recipes_raises(rng, recipe, bad):
    x, w, b, _ = make_layer(rng, (6, 8), 3)
    xb = x.copy()
    xb[3, 2] = bad
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(xb, w, b, recipe)
    wb = w.copy()
    wb[1, 5] = bad
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(x, wb, b, recipe)
    for occ_per in ("tensor", "row"):
        r = f4.Recipe.get(recipe).replace(occ_per=occ_per)
        with pytest.raises(f4.NonFiniteError):
            f4.linear_forward(xb, w, b, r)


def test_non_finite_propagates_under_fp32(rng):
    x, w, b, dy = make_layer(rng, (6, 8), 3, zero_rows=False)
    xb = x.copy()
    xb[3, 2] = np.nan
    y, s = f4.linear_forward(xb, w, b, "fp32")
    assert np.all(np.isnan(y[3])) and np.all(np.isfinite(np.delete(y, 3, axis=0)))
    dx, dw, db = f4.linear_backward(dy, s)
    assert np.all(np.isnan(dw[:, 2])) and np.all(np.isfinite(np.delete(dw, 2, axis=1)))
    assert np.all(np.isfinite(dx))
    wb = w.copy()
    wb[1, 5] = np.inf
    y, _ = f4.linear_forward(x, wb, b, "fp32")
    assert not np.all(np.isfinite(y[:, 1])) and np.all(np.isfinite(np.delete(y, 1, axis=1)))


def test_non_finite_dy_propagates(rng):
    """A NaN in dY is a float32 gradient like any other: it reaches the outputs as NaN
    (with grad_fp8, the whole per-tensor group of dY becomes NaN, numerics.md §3), and nothing aborts."""
    x, w, b, dy = make_layer(rng, (6, 8), 3, zero_rows=False)
    dyb = dy.copy()
    dyb[2, 1] = np.nan
    _, s = f4.linear_forward(x, w, b, "wang2025")
    dx, dw, db = f4.linear_backward(dyb, s)
    assert np.all(np.isnan(dx[2])) and np.isnan(db[1]) and np.any(np.isnan(dw[1]))
    _, s = f4.linear_forward(x, w, b, f4.Recipe.get("wang2025").replace(grad_fp8=True))
    dx, dw, db = f4.linear_backward(dyb, s)
    assert np.all(np.isnan(dx)) and np.all(np.isnan(dw))
