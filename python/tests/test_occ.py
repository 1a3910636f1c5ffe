"""OCC (numerics.md §5): thresholds, clamp, CSR residual and the sparse compensation product,
against numpy references written here (sorted copies, float64 index formulas, dense
float64 products). Nothing calls fp4swift to produce an expected value."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fp4swift as f4
from linear_reference import occ_indices, ref_occ_thresholds, rel_err
from reference import matrix_shape, ref_fake_quantize

F32 = np.float32
ALPHAS = [0.5 + 1e-9, 0.51, 0.75, 0.9, 0.97, 0.99, 0.995, 0.999, 1.0]


def ref_thresholds(x, alpha, per):
    """(lo, hi) of the [rows, cols] view, by np.sort and the spec's index formula."""
    x = np.asarray(x, dtype=F32)
    rows, cols = matrix_shape(x.shape)
    return ref_occ_thresholds(x.reshape(rows, cols), alpha, per)


def ref_clamp(x2, lo, hi, per):
    """X_c with every value not strictly outside [lo, hi] kept bit for bit."""
    lo_b, hi_b = (lo[:, None], hi[:, None]) if per == "row" else (lo[0], hi[0])
    return np.where(x2 < lo_b, lo_b, np.where(x2 > hi_b, hi_b, x2)).astype(F32)


def check_occ(x, alpha, per, what=""):
    """Runs occ_thresholds and occ on x and checks every output against the references."""
    x = np.asarray(x, dtype=F32)
    rows, cols = matrix_shape(x.shape)
    x2 = x.reshape(rows, cols)
    lo, hi = f4.occ_thresholds(x, alpha, per)
    rlo, rhi = ref_thresholds(x, alpha, per)
    assert lo.dtype == np.float32 and hi.dtype == np.float32
    assert lo.shape == rlo.shape and hi.shape == rhi.shape, f"{what}: {lo.shape} vs {rlo.shape}"
    # == (not bitwise): a tie between −0 and +0 may pick either zero.
    assert np.array_equal(lo, rlo), f"{what}: lo {lo[:5]} != {rlo[:5]}"
    assert np.array_equal(hi, rhi), f"{what}: hi {hi[:5]} != {rhi[:5]}"
    assert np.all(lo <= hi)

    xc, res = f4.occ(x, alpha, per)
    assert xc.shape == x.shape and xc.dtype == np.float32
    xc2 = xc.reshape(rows, cols)
    want = ref_clamp(x2, rlo, rhi, per)
    assert np.array_equal(xc2, want), f"{what}: X_c differs at {np.argwhere(xc2 != want)[:5].tolist()}"
    # Values inside the thresholds are copied bit for bit (signed zeros included).
    lo_b, hi_b = (rlo[:, None], rhi[:, None]) if per == "row" else (rlo[0], rhi[0])
    inside = (x2 >= lo_b) & (x2 <= hi_b)
    np.testing.assert_array_equal(xc2[inside].view(np.uint32), x2[inside].view(np.uint32))

    # Residual: CSR over the [rows, cols] view, one entry exactly where x is outside.
    assert isinstance(res, f4.CSR)
    assert tuple(res.shape) == (rows, cols)
    n_out = int((x2 > hi_b).sum() + (x2 < lo_b).sum())
    assert res.nnz == n_out, f"{what}: nnz {res.nnz}, expected {n_out}"
    indptr, indices, values, shape = res
    assert indptr.shape == (rows + 1,) and indptr[0] == 0 and indptr[-1] == n_out
    assert np.all(np.diff(indptr) >= 0)
    assert indices.shape == (n_out,) and values.shape == (n_out,) and values.dtype == np.float32
    if n_out:
        assert indices.min() >= 0 and indices.max() < cols
    for r in range(rows):
        seg = indices[indptr[r]:indptr[r + 1]]
        assert np.all(np.diff(seg) > 0), f"{what}: row {r} column indices not strictly ascending"
        outside_cols = np.flatnonzero((x2[r] > (rhi[r] if per == "row" else rhi[0]))
                                      | (x2[r] < (rlo[r] if per == "row" else rlo[0])))
        np.testing.assert_array_equal(seg, outside_cols)
    with np.errstate(over="ignore"):  # |x − threshold| above float32's range is ±inf
        dense = (x2 - want).astype(F32)  # ΔX = X − X_c in float32
    np.testing.assert_array_equal(res.toarray(), dense)
    assert np.all(values != 0)
    # About 2(1 − α)n entries per group, never more than the formula's bound.
    n = cols if per == "row" else rows * cols
    groups = rows if per == "row" else 1
    if n:
        li, hi_i = occ_indices(n, alpha)
        assert n_out <= groups * (li + (n - 1 - hi_i))
    return xc, res, rlo, rhi


# ---------------------------------------------------------------------------
# Index formula
# ---------------------------------------------------------------------------


def test_index_formula_hand_values():
    # (1 − 0.99)·100 = 1.0000000000000009 in float64: lo index 1.
    assert occ_indices(100, 0.99) == (1, 99)
    assert occ_indices(1, 1.0) == (0, 0)
    assert occ_indices(1, 0.99) == (0, 0)
    assert occ_indices(10, 0.51) == (4, 5)
    assert occ_indices(400, 0.99) == (4, 396)
    assert occ_indices(1000, 0.999) == (1, 999)
    for n in [1, 2, 3, 10, 99, 1000, 12345]:
        for a in ALPHAS:
            lo, hi = occ_indices(n, a)
            assert lo == math.floor((1 - a) * n) and hi == min(math.floor(a * n), n - 1)
            assert 0 <= lo <= hi < n


def test_thresholds_pick_the_index_formula_order_statistics():
    # A permutation of 0..n−1: the thresholds are the ranks themselves.
    rng = np.random.default_rng(7)
    for n in [1, 2, 3, 10, 100, 401, 1000, 4097]:
        x = rng.permutation(n).astype(F32)
        for a in ALPHAS:
            lo, hi = f4.occ_thresholds(x, a)
            li, hi_i = occ_indices(n, a)
            assert (lo[0], hi[0]) == (li, hi_i), f"n={n} alpha={a}"


# ---------------------------------------------------------------------------
# Random data
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (1000,), (8, 64), (33, 17), (2, 3, 50), (4, 1, 5, 9), (1, 300)])
@pytest.mark.parametrize("per", ["tensor", "row"])
def test_random_data(rng, shape, per):
    x = (rng.standard_t(3, size=shape) * rng.uniform(0.1, 10)).astype(F32)
    for a in ALPHAS:
        check_occ(x, a, per, f"{shape} {per} alpha={a}")


@pytest.mark.parametrize("per", ["tensor", "row"])
def test_large_inputs_parallel_selection(rng, per):
    # Sizes above the parallel-selection cutoff (65 536 per group), and many rows.
    for shape in [(100_003,), (2, 70_001), (512, 96)]:
        x = rng.standard_normal(shape).astype(F32)
        x.reshape(-1)[rng.integers(0, x.size, 50)] *= 1000  # outliers
        for a in [0.9, 0.99, 0.999]:
            check_occ(x, a, per, f"{shape} {per} alpha={a}")


def test_default_alpha_and_group():
    x = np.random.default_rng(3).standard_normal((16, 64)).astype(F32)
    lo, hi = f4.occ_thresholds(x)
    rlo, rhi = ref_thresholds(x, 0.99, "tensor")
    assert np.array_equal(lo, rlo) and np.array_equal(hi, rhi) and lo.shape == (1,)
    xc, res = f4.occ(x)
    np.testing.assert_array_equal(xc, ref_clamp(x, rlo, rhi, "tensor"))
    # n = 1024, α = 0.99: lo index 10, hi index 1013 → exactly 10 + 10 outliers (distinct values).
    assert res.nnz == 20


def test_float64_and_noncontiguous_input(rng):
    x = rng.standard_normal((20, 30))
    check_occ(x, 0.9, "row")  # float64 accepted, converted once
    xc, _ = f4.occ(x, 0.9, "row")
    assert xc.dtype == np.float32
    xt = rng.standard_normal((30, 20)).astype(F32).T  # non-contiguous view
    xc1, r1 = f4.occ(xt, 0.95, "row")
    xc2, r2 = f4.occ(np.ascontiguousarray(xt), 0.95, "row")
    np.testing.assert_array_equal(xc1, xc2)
    np.testing.assert_array_equal(r1.toarray(), r2.toarray())
    check_occ(xt, 0.95, "row")


# ---------------------------------------------------------------------------
# Adversarial data
# ---------------------------------------------------------------------------


def adversarial_cases(n, rng):
    yield "all equal", np.full(n, 1.5, F32)
    yield "all zero", np.zeros(n, F32)
    yield "signed zeros", np.where(rng.random(n) < 0.5, F32(-0.0), F32(0.0)).astype(F32)
    yield "two values", np.where(rng.random(n) < 0.5, F32(-2), F32(7)).astype(F32)
    yield "few levels (ties)", rng.integers(-3, 4, n).astype(F32)
    z = np.full(n, 0.25, F32)
    z[n // 3] = -1e30
    z[n // 2] = 1e30
    yield "one value + two huge outliers", z
    yield "sorted ascending", np.arange(n, dtype=F32)
    yield "sorted descending", np.arange(n, dtype=F32)[::-1].copy()
    yield "extremes", np.where(rng.random(n) < 0.5, F32(-3.4e38), F32(3.4e38)).astype(F32)
    s = rng.standard_normal(n).astype(F32) * F32(1e-40)  # subnormals
    yield "subnormals", s
    yield "one negative outlier", np.concatenate([np.ones(n - 1, F32), [F32(-50)]]) if n > 1 else np.ones(1, F32)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 47, 100, 101, 1000])
def test_adversarial_per_tensor(rng, n):
    for name, x in adversarial_cases(n, rng):
        for a in ALPHAS:
            check_occ(x, a, "tensor", f"{name} n={n} alpha={a}")
            check_occ(x.reshape(1, -1), a, "row", f"{name} 1 row n={n} alpha={a}")


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 1), (4, 2), (6, 33), (3, 200)])
def test_adversarial_per_row(rng, rows, cols):
    for name, x in adversarial_cases(rows * cols, rng):
        x = x.reshape(rows, cols)
        for a in [0.51, 0.9, 0.99, 1.0]:
            for per in ("row", "tensor"):
                check_occ(x, a, per, f"{name} {rows}x{cols} {per} alpha={a}")
                check_occ(x.reshape(1, rows, cols), a, per, f"{name} 3-D {rows}x{cols} {per} alpha={a}")


def test_n_equal_one_and_alpha_one():
    for per in ("tensor", "row"):
        for a in [0.51, 0.99, 1.0]:
            xc, res = f4.occ(np.array([-3.25], F32), a, per)
            np.testing.assert_array_equal(xc, [-3.25])
            assert res.nnz == 0
    # α = 1: lo = min, hi = max, nothing is clamped.
    x = np.random.default_rng(1).standard_normal((9, 13)).astype(F32)
    for per in ("tensor", "row"):
        lo, hi = f4.occ_thresholds(x, 1.0, per)
        axis = 1 if per == "row" else None
        np.testing.assert_array_equal(lo, np.atleast_1d(x.min(axis=axis)))
        np.testing.assert_array_equal(hi, np.atleast_1d(x.max(axis=axis)))
        xc, res = f4.occ(x, 1.0, per)
        np.testing.assert_array_equal(xc, x)
        assert res.nnz == 0


def test_rows_are_independent_groups():
    # Per row, one row's outliers do not move another row's thresholds.
    x = np.tile(np.linspace(-1, 1, 100, dtype=F32), (3, 1))
    x[1, 5] = 1e6
    lo, hi = f4.occ_thresholds(x, 0.99, "row")
    np.testing.assert_array_equal(lo[[0, 2]], lo[0])
    assert hi[1] == F32(1e6) and hi[0] == F32(1.0)
    # n = 100, α = 0.99: hi index 99 (the max), lo index 1.
    assert lo[0] == np.sort(x[0])[1]


def test_empty_inputs():
    # Zero rows: no groups at all.
    for shape in [(0, 5), (2, 0, 4), (0, 0)]:
        x = np.zeros(shape, F32)
        for per in ("tensor", "row"):
            lo, hi = f4.occ_thresholds(x, 0.99, per)
            assert lo.size == 0 and hi.size == 0
            xc, res = f4.occ(x, 0.99, per)
            assert xc.shape == shape and res.nnz == 0


def test_empty_rows_have_no_thresholds():
    """A [3, 0] tensor holds no values, so per-row OCC has no order statistics to return:
    like the per-tensor call (0 groups), the thresholds must be empty, not uninitialized
    memory (the Swift core documents 'an empty tensor has no groups')."""
    for shape in [(3, 0), (0,), (2, 2, 0)]:
        x = np.zeros(shape, F32)
        rows, _ = matrix_shape(shape)
        xc, res = f4.occ(x, 0.99, "row")
        assert xc.shape == shape and res.nnz == 0 and res.indptr.shape == (rows + 1,)
        lo, hi = f4.occ_thresholds(x, 0.99, "tensor")
        assert lo.size == 0 and hi.size == 0
        lo, hi = f4.occ_thresholds(x, 0.99, "row")
        assert lo.size == 0 and hi.size == 0, f"thresholds of empty rows {shape}: lo={lo}, hi={hi}"


# ---------------------------------------------------------------------------
# Compensation products
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("per", ["tensor", "row"])
@pytest.mark.parametrize("alpha", [0.9, 0.97, 0.99, 0.999])
def test_csr_matmul_t_equals_dense(rng, per, alpha):
    for T, K, N in [(64, 96, 40), (1, 7, 3), (33, 5, 17), (128, 256, 64)]:
        x = (rng.standard_t(2, size=(T, K))).astype(F32)
        w = rng.standard_normal((N, K)).astype(F32)
        xc, res = f4.occ(x, alpha, per)
        y = f4.csr_matmul_t(res, w)
        assert y.shape == (T, N) and y.dtype == np.float32
        lo, hi = ref_thresholds(x, alpha, per)
        dense = x.astype(np.float64) - ref_clamp(x, lo, hi, per).astype(np.float64)
        want = dense @ w.astype(np.float64).T
        if np.any(want):
            assert rel_err(y, want) <= 1e-5
        else:
            np.testing.assert_array_equal(y, 0)


def test_csr_matmul_t_hand_example():
    r = f4.CSR(np.array([0, 2, 2, 3], np.int64), np.array([0, 3, 1], np.int32),
               np.array([2.0, -1.0, 0.5], F32), (3, 4))
    w = np.arange(8, dtype=F32).reshape(2, 4)  # rows [0 1 2 3], [4 5 6 7]
    y = f4.csr_matmul_t(r, w)
    np.testing.assert_array_equal(y, [[2 * 0 - 3, 2 * 4 - 7], [0, 0], [0.5 * 1, 0.5 * 5]])


def test_csr_matmul_t_empty_residual():
    x = np.ones((5, 6), F32)
    _, res = f4.occ(x, 0.9)
    assert res.nnz == 0
    np.testing.assert_array_equal(f4.csr_matmul_t(res, np.ones((3, 6), F32)), np.zeros((5, 3)))


@pytest.mark.parametrize("per", ["tensor", "row"])
@pytest.mark.parametrize("fmt", ["e2m1", "e1m2", "e3m0"])
def test_compensated_product_equals_dense_reference(rng, per, fmt):
    """Q(X_c)·Wᵀ + ΔX·Wᵀ (dense float64 quantized product + the library's sparse product)
    equals the dense float64 (Q(X_c) + ΔX)·Wᵀ, and compensation brings the product closer
    to X·Wᵀ than dropping the residual."""
    T, K, N = 48, 64, 24
    x = rng.standard_t(2, size=(T, K)).astype(F32)
    w = rng.standard_normal((N, K)).astype(F32)
    wq = ref_fake_quantize(w, fmt=fmt, granularity="row", scale_rule="absmax").astype(np.float64)
    xc, res = f4.occ(x, 0.97, per)
    lo, hi = ref_thresholds(x, 0.97, per)
    xc_ref = ref_clamp(x, lo, hi, per)
    xq = ref_fake_quantize(xc_ref, fmt=fmt, granularity="row", scale_rule="absmax").astype(np.float64)
    delta = (x - xc_ref).astype(np.float64)
    got = xq @ wq.T + f4.csr_matmul_t(res, wq.astype(F32)).astype(np.float64)
    want = (xq + delta) @ wq.T
    assert rel_err(got, want) <= 1e-5
    exact = x.astype(np.float64) @ wq.T
    err_comp = np.linalg.norm(got - exact)
    err_drop = np.linalg.norm(xq @ wq.T - exact)
    assert err_comp < err_drop
    # The compensated reconstruction X̂ = Q(X_c) + ΔX differs from X only by the
    # quantization error of the clamped tensor, Q(X_c) − X_c.
    xhat = xq + res.toarray().astype(np.float64)
    np.testing.assert_allclose(xhat - x, xq - xc_ref, rtol=0, atol=1e-5 * np.abs(x).max())


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 1.01, -1, 0, 2, 0.25, np.nan, np.inf])
def test_alpha_outside_range(alpha):
    x = np.ones((3, 4), F32)
    with pytest.raises(ValueError):
        f4.occ(x, alpha)
    with pytest.raises(ValueError):
        f4.occ_thresholds(x, alpha)
    with pytest.raises(ValueError):
        f4.occ(x, alpha, "row")


def test_bad_alpha_type_group_and_dtype():
    x = np.ones((3, 4), F32)
    for a in ["0.9", None, [0.9]]:
        with pytest.raises(TypeError):
            f4.occ(x, a)
    for per in ["col", "block", "", None]:
        with pytest.raises(ValueError):
            f4.occ(x, 0.9, per)
        with pytest.raises(ValueError):
            f4.occ_thresholds(x, 0.9, per)
    for bad in (np.ones((3, 4), np.int64), np.ones(3, bool), np.array(["x"]), np.ones(2, np.complex64)):
        with pytest.raises(TypeError):
            f4.occ(bad, 0.9)
        with pytest.raises(TypeError):
            f4.occ_thresholds(bad, 0.9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises(bad):
    for per in ("tensor", "row"):
        x = np.ones((4, 8), F32)
        x[2, 5] = bad
        with pytest.raises(f4.NonFiniteError):
            f4.occ(x, 0.9, per)
        with pytest.raises(f4.NonFiniteError):
            f4.occ_thresholds(x, 0.9, per)


def test_csr_matmul_t_bad_input():
    _, res = f4.occ(np.random.default_rng(0).standard_normal((4, 6)).astype(F32), 0.75)
    with pytest.raises(ValueError):
        f4.csr_matmul_t(res, np.ones((3, 5), F32))  # wrong K
    with pytest.raises(ValueError):
        f4.csr_matmul_t(res, np.ones(6, F32))  # 1-D
    with pytest.raises(TypeError):
        f4.csr_matmul_t(res, np.ones((3, 6), np.int32))
    bad_cases = [
        f4.CSR(np.array([0, 1], np.int64), np.array([0], np.int32), np.ones(1, F32), (3, 4)),  # indptr too short
        f4.CSR(np.array([0, 1, 1, 1], np.int64), np.array([4], np.int32), np.ones(1, F32), (3, 4)),  # column ≥ cols
        f4.CSR(np.array([0, 1, 1, 1], np.int64), np.array([-1], np.int32), np.ones(1, F32), (3, 4)),  # negative column
        f4.CSR(np.array([0, 2, 1, 2], np.int64), np.array([0, 1], np.int32), np.ones(2, F32), (3, 4)),  # decreasing
        f4.CSR(np.array([0, 1, 2, 9], np.int64), np.array([0, 1], np.int32), np.ones(2, F32), (3, 4)),  # nnz > entries
    ]
    for r in bad_cases:
        with pytest.raises(ValueError):
            f4.csr_matmul_t(r, np.ones((2, 4), F32))
