"""DGE (numerics.md §4): f' and the surrogate f against a float64 numpy implementation of the
spec's formulas (linear_reference.ref_dge_derivative), never against fp4swift itself."""
from __future__ import annotations

import numpy as np
import pytest

import fp4swift as f4
from linear_reference import ref_dge_derivative, ref_dge_surrogate
from reference import FP4_FORMATS, MAGS

F32 = np.float32

# numerics.md §4 check values (k = 5, C = 3), from a bfloat16 computation: 1e-2 relative.
CHECK_V = [-6, -5.375, -4.75, -4.09375, -3.46875, -2.84375, -2.203125, -1.578125, -0.94921875, -0.31640625]
CHECK_FP = [0.2002, 0.4375, 0.6055, 0.2168, 1.8359, 0.2695, 0.3027, 0.2695, 0.2402, 0.5781]

KS = [0.5, 1.0, 2.0, 5.0, 10.0]
CLAMPS = [1.5, 3.0, 10.0, 100.0]


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal rule in float64 (np.trapz was removed in numpy 2)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def dense_points(fmt: str) -> np.ndarray:
    """A dense float32 grid over [−7, 7] plus every grid point, midpoint and quarter point of
    the format, ±max, the neighbours of ±max, and points a few ulps from each midpoint."""
    g = MAGS[fmt]
    lin = np.linspace(-7, 7, 140_001)
    mids = (g[:-1] + g[1:]) / 2
    quarters = np.concatenate([g[:-1] + (g[1:] - g[:-1]) * q for q in (0.125, 0.25, 0.75, 0.875)])
    special = np.concatenate([g, mids, quarters]).astype(F32)
    near = [special]
    for direction in (np.inf, -np.inf):
        p = special.copy()
        for _ in range(4):
            p = np.nextafter(p, F32(direction))
            near.append(p.copy())
    m = F32(g[-1])
    edge = np.array([m, np.nextafter(m, F32(np.inf)), np.nextafter(m, F32(0)), 7.0, 1e6], dtype=F32)
    pos = np.concatenate([lin.astype(F32)] + near + [edge])
    return np.unique(np.concatenate([pos, -pos]))


def assert_rel(got: np.ndarray, want: np.ndarray, v: np.ndarray, rtol: float, atol: float, what: str) -> None:
    got64 = got.astype(np.float64)
    bad = np.abs(got64 - want) > rtol * np.abs(want) + atol
    if bad.any():
        i = np.flatnonzero(bad)[:6]
        raise AssertionError(f"{what}: {bad.sum()} of {v.size} points off; v={v[i].tolist()} "
                             f"got={got64[i].tolist()} want={want[i].tolist()}")


# ---------------------------------------------------------------------------
# Check values and the formula
# ---------------------------------------------------------------------------


def test_spec_check_values():
    v = np.array(CHECK_V, dtype=F32)
    for sign in (1, -1):
        got = f4.dge_derivative(sign * v)  # defaults: e2m1, k = 5, C = 3
        assert got.dtype == np.float32 and got.shape == v.shape
        np.testing.assert_allclose(got, CHECK_FP, rtol=1e-2)
        got2 = f4.dge_derivative(sign * v, fmt="e2m1", k=5, clamp=3)
        np.testing.assert_array_equal(got2, got)


def test_spec_check_values_agree_with_float64_formula():
    # The reference itself reproduces the spec's check values (guards the reference).
    np.testing.assert_allclose(ref_dge_derivative(np.array(CHECK_V)), CHECK_FP, rtol=1e-2)


@pytest.mark.parametrize("fmt", FP4_FORMATS)
@pytest.mark.parametrize("k", KS)
def test_derivative_matches_float64_formula_on_dense_grid(fmt, k):
    v = dense_points(fmt)
    for C in CLAMPS:
        got = f4.dge_derivative(v, fmt=fmt, k=k, clamp=C)
        assert got.dtype == np.float32 and got.shape == v.shape
        want = ref_dge_derivative(v, fmt, k, C)
        assert_rel(got, want, v, rtol=1e-6, atol=1e-12, what=f"{fmt} k={k} C={C}")


@pytest.mark.parametrize("fmt", FP4_FORMATS)
def test_derivative_grid_points_midpoints_and_symmetry(fmt):
    g = MAGS[fmt]
    k, C = 5.0, 3.0
    pts = np.concatenate([g, -g]).astype(F32)
    # f' = 1/k on every grid point (both interval ends give |2x/δ − 1| = 1), including ±max.
    np.testing.assert_allclose(f4.dge_derivative(pts, fmt, k, C), 1 / k, rtol=1e-6)
    mids = ((g[:-1] + g[1:]) / 2).astype(F32)
    # f' reaches C at interval midpoints.
    np.testing.assert_array_equal(f4.dge_derivative(np.concatenate([mids, -mids]), fmt, k, C), F32(C))
    v = dense_points(fmt)
    np.testing.assert_array_equal(f4.dge_derivative(v, fmt), f4.dge_derivative(-v, fmt))


@pytest.mark.parametrize("fmt", FP4_FORMATS)
@pytest.mark.parametrize("k", [2.0, 5.0, 10.0])
@pytest.mark.parametrize("C", [0.1, 0.5, 1.5, 3.0, 10.0])
def test_clamp_holds_and_is_reached(fmt, k, C):
    v = dense_points(fmt)
    d = f4.dge_derivative(v, fmt, k, C)
    assert np.all(d <= F32(C)), f"max f' {d.max()} above the clamp {C}"
    assert np.all(d >= 0)
    m = MAGS[fmt][-1]
    inside = np.abs(v) <= m
    # Near the midpoints the unclamped value exceeds any clamp: there it equals C exactly.
    want = ref_dge_derivative(v, fmt, k, C)
    np.testing.assert_array_equal(d[inside & (want == C)], F32(C))
    assert (want == C).sum() > 0


@pytest.mark.parametrize("fmt", FP4_FORMATS)
def test_zero_outside_range(fmt):
    m = F32(MAGS[fmt][-1])
    above = np.array([np.nextafter(m, F32(np.inf)), m * 1.0001, m + 0.5, 7.0, 17.0, 1e3, 3e38, np.inf], dtype=F32)
    above = above[above > m]
    for k, C in [(5, 3), (2, 10), (10, 1e6), (0.5, 3)]:
        np.testing.assert_array_equal(f4.dge_derivative(np.concatenate([above, -above]), fmt, k, C), 0)
    # The last interval is closed: ±max itself is a grid point, f' = 1/k, not 0.
    np.testing.assert_allclose(f4.dge_derivative(np.array([m, -m]), fmt, 5, 3), 0.2, rtol=1e-6)


def test_k_one_is_straight_through():
    # k = 1: f(x) = x, f' = 1 everywhere inside the range (min(1, C)).
    for fmt in FP4_FORMATS:
        v = dense_points(fmt)
        inside = np.abs(v) <= MAGS[fmt][-1]
        d = f4.dge_derivative(v, fmt, 1.0, 3.0)
        np.testing.assert_allclose(d[inside], 1.0, rtol=1e-6)
        np.testing.assert_allclose(f4.dge_derivative(v, fmt, 1.0, 0.25)[inside], 0.25, rtol=1e-6)


def test_shapes_dtypes_and_empty():
    v = np.linspace(-3, 3, 24).reshape(2, 3, 4)
    got = f4.dge_derivative(v)  # float64 in: converted once, float32 out
    assert got.shape == (2, 3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref_dge_derivative(v.astype(F32)), rtol=1e-6)
    assert f4.dge_derivative(np.zeros((0, 3), F32)).shape == (0, 3)
    # Non-contiguous input.
    big = np.linspace(-5, 5, 40, dtype=F32).reshape(8, 5)
    np.testing.assert_array_equal(f4.dge_derivative(big[:, ::2]), f4.dge_derivative(np.ascontiguousarray(big[:, ::2])))
    s = f4.dge_surrogate(v)
    assert s.shape == (2, 3, 4) and s.dtype == np.float32


# ---------------------------------------------------------------------------
# Mean derivative over an interval = 1 (integral of f' is δ)
# ---------------------------------------------------------------------------


def _half_interval_points(mid: float, half: float, side: int, t0: float, n: int) -> np.ndarray:
    """float32 points mid + side·t·half for t geometric in [t0, 1], de-duplicated, sorted by t."""
    t = np.geomspace(t0, 1.0, n)
    v = (mid + side * t * half).astype(F32)
    v = np.unique(v)
    tt = np.abs(v.astype(np.float64) - mid) / half
    keep = tt > 0
    v = v[keep]
    return v[np.argsort(np.abs(v.astype(np.float64) - mid))]


@pytest.mark.parametrize("fmt", FP4_FORMATS)
@pytest.mark.parametrize("k", [2.0, 5.0, 10.0])
def test_mean_unclamped_derivative_is_one(fmt, k):
    """Numerical integration of the library's f' (clamp 1e30, i.e. unclamped) over each
    interval, positive and negative.

    f' has an integrable singularity |t|^(1/k − 1) at the midpoint (t = 2x/δ − 1 = 0). The
    half-interval integral ∫ f' dx = (δ/2)∫ f'(t) dt is taken in the variable u = |t|^(1/k)
    (dt = k·u^(k−1) du), which makes the integrand smooth, by the trapezoidal rule over the
    float32 sample points actually fed to the library. float32 cannot sample closer to the
    midpoint than an ulp, so the integral starts at the innermost sample t_first ~ 1e-6 and
    the spec formula supplies the remaining mass (δ/2)·t_first^(1/k) of the innermost sliver."""
    g = MAGS[fmt]
    for i in range(len(g) - 1):
        a, d = g[i], g[i + 1] - g[i]
        for sgn in (1, -1):
            mid, half = sgn * (a + d / 2), d / 2
            total = 0.0
            for side in (1, -1):
                v = _half_interval_points(mid, half, side, 1e-6, 4000)
                t = np.abs(v.astype(np.float64) - mid) / half
                fp = f4.dge_derivative(v, fmt, k, 1e30).astype(np.float64)
                u = t ** (1 / k)
                integrand = fp * k * u ** (k - 1)  # f'(t) dt/du
                total += half * (_trapz(integrand, u) + u[0])
            mean = total / d
            assert abs(mean - 1) < 1e-5, f"{fmt} k={k} interval [{a}, {a + d}] sign {sgn}: mean f' {mean}"
    # A plain trapezoid in x over a uniform grid (step 1e-5 in t), no change of variable,
    # no tail: the mean falls short of 1 by about the missing sliver's mass (1e-5)^(1/k)
    # (0.003 for k = 2, 0.3 for k = 10), never more, and never overshoots.
    for i in range(len(g) - 1):
        a, d = g[i], g[i + 1] - g[i]
        v = np.unique(np.linspace(a, a + d, 200_001).astype(F32))
        fp = f4.dge_derivative(v, fmt, k, 1e30)
        mid = F32(a + d / 2)
        fp = np.where(v == mid, 0, fp)  # the midpoint sample is the clamp (1e30) itself
        mean = _trapz(fp, v) / d
        assert 1 - 1.2 * 1e-5 ** (1 / k) < mean < 1 + 1e-4, f"{fmt} k={k} [{a}, {a + d}] mean {mean}"


@pytest.mark.parametrize("fmt", FP4_FORMATS)
@pytest.mark.parametrize("k", [0.5, 0.8, 1.0])
def test_mean_derivative_is_one_without_singularity(fmt, k):
    """k ≤ 1: f' = (1/k)|t|^(1/k − 1) is bounded, so plain trapezoidal integration over the
    whole interval must give δ, with no help from the formula."""
    g = MAGS[fmt]
    for i in range(len(g) - 1):
        a, d = g[i], g[i + 1] - g[i]
        for sgn in (1, -1):
            v = np.unique((sgn * np.linspace(a, a + d, 20001)).astype(F32))
            fp = f4.dge_derivative(v, fmt, k, 1e30).astype(np.float64)
            # The left end (a) belongs to this interval; the right end a+δ to the next one,
            # where f' is also 1/k (grid point), so the sampled closed interval is right.
            mean = _trapz(fp, v.astype(np.float64)) / d
            assert abs(abs(mean) - 1) < 1e-5, f"{fmt} k={k} [{a}, {a + d}]: mean {mean}"


# ---------------------------------------------------------------------------
# The surrogate f
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FP4_FORMATS)
@pytest.mark.parametrize("k", [1.0, 2.0, 5.0, 10.0])
def test_surrogate_matches_formula_and_is_monotone(fmt, k):
    v = dense_points(fmt)
    f = f4.dge_surrogate(v, fmt, k)
    assert f.dtype == np.float32
    want = ref_dge_surrogate(v, fmt, k)
    m = MAGS[fmt][-1]
    np.testing.assert_allclose(f, want, rtol=0, atol=2e-6 * m)
    # Monotone non-decreasing over [−7, 7] (v is sorted), saturating at ±max outside.
    assert np.all(np.diff(f.astype(np.float64)) >= 0), "surrogate is not monotone"
    out = np.abs(v) > m
    np.testing.assert_array_equal(np.abs(f[out]), F32(m))
    # Odd function.
    np.testing.assert_array_equal(f4.dge_surrogate(-v, fmt, k), -f)


@pytest.mark.parametrize("fmt", FP4_FORMATS)
@pytest.mark.parametrize("k", [2.0, 5.0, 10.0])
def test_surrogate_maps_interval_ends_to_grid_points_and_is_continuous(fmt, k):
    g = MAGS[fmt]
    pts = np.concatenate([g, -g]).astype(F32)
    f = f4.dge_surrogate(pts, fmt, k)
    np.testing.assert_allclose(f, pts, rtol=1e-6, atol=1e-7)
    # Midpoints map to midpoints (t = 0).
    mids = ((g[:-1] + g[1:]) / 2).astype(F32)
    np.testing.assert_allclose(f4.dge_surrogate(mids, fmt, k), mids, rtol=1e-6)
    # Continuity at every grid point: a few ulps either side stay next to the grid value
    # (f is flat there: f(a + x) − a ≈ x/k).
    for direction in (np.inf, -np.inf):
        p = pts.copy()
        for _ in range(8):
            p = np.nextafter(p, F32(direction))
        fp = f4.dge_surrogate(p, fmt, k).astype(np.float64)
        gap = np.abs(fp - pts.astype(np.float64))
        assert gap.max() <= 1e-5, f"jump at grid point {pts[np.argmax(gap)]}: {gap.max()}"
    # Continuity at the midpoints too, where f is steep: f(mid ± ε) − mid = ±(δ/2)(2ε/δ)^(1/k).
    d = np.diff(g)
    for direction in (np.inf, -np.inf):
        p = np.nextafter(mids, F32(direction))
        gap = np.abs(f4.dge_surrogate(p, fmt, k).astype(np.float64) - mids)
        eps = np.abs(p.astype(np.float64) - mids)
        bound = (d / 2) * (2 * eps / d) ** (1 / k)
        assert np.all(gap <= 1.01 * bound + 1e-6), (gap, bound)


@pytest.mark.parametrize("fmt", FP4_FORMATS)
def test_surrogate_derivative_is_dge(fmt):
    """Finite differences of f (float64 of the library's f) agree with the library's f'
    away from midpoints and grid points: f' is the derivative of f."""
    g = MAGS[fmt]
    k = 5.0
    for i in range(len(g) - 1):
        a, d = g[i], g[i + 1] - g[i]
        x = a + d * np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
        h = d * 1e-3
        fp = (f4.dge_surrogate(x + h, fmt, k).astype(np.float64) - f4.dge_surrogate(x - h, fmt, k)) / (2 * h)
        want = ref_dge_derivative(x, fmt, k, 1e30)
        np.testing.assert_allclose(fp, want, rtol=2e-3)
        np.testing.assert_allclose(f4.dge_derivative(x, fmt, k, 1e30), want, rtol=1e-6)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, -0.5, np.nan, np.inf])
def test_bad_k(k):
    with pytest.raises(ValueError):
        f4.dge_derivative([0.3], k=k)
    with pytest.raises(ValueError):
        f4.dge_surrogate([0.3], k=k)


@pytest.mark.parametrize("clamp", [0, -3, np.nan])
def test_bad_clamp(clamp):
    with pytest.raises(ValueError):
        f4.dge_derivative([0.3], clamp=clamp)


def test_bad_format_and_dtype():
    for fmt in ["e4m3", "e5m2", "e2m2", "", None]:
        with pytest.raises((ValueError, TypeError)):
            f4.dge_derivative([0.3], fmt=fmt)
        with pytest.raises((ValueError, TypeError)):
            f4.dge_surrogate([0.3], fmt=fmt)
    for bad in (np.array([1, 2], dtype=np.int32), np.array([True]), np.array(["a"]), np.array([1 + 2j])):
        with pytest.raises(TypeError):
            f4.dge_derivative(bad)
        with pytest.raises(TypeError):
            f4.dge_surrogate(bad)
    with pytest.raises(TypeError):
        f4.dge_derivative([0.5], k="5")


def test_nan_in_nan_out():
    # numerics.md §4: f' (and the surrogate f) of NaN is NaN, whatever its payload; the rest is unaffected.
    payloads = np.array([0x7FC00000, 0x7FC00001, 0xFFC00000, 0x7F800001, 0x7FFFFFFF], dtype=np.uint32).view(F32)
    v = np.concatenate([payloads, np.array([1.25, -3.0], dtype=F32)])
    for fmt in ("e2m1", "e1m2", "e3m0"):
        out = f4.dge_derivative(v, fmt=fmt)
        assert np.all(np.isnan(out[:5])), fmt
        np.testing.assert_allclose(out[5:], ref_dge_derivative(v[5:], fmt), rtol=1e-6)
        assert np.all(np.isnan(f4.dge_surrogate(v, fmt=fmt)[:5])), fmt


def test_dge_with_two_level_weight_scales_uses_the_tensor_scale():
    # numerics.md §4 with nvfp4 weights: v = W · (S / sb), the quantizer's own order (the factor
    # S was once left out, so v was off by S).
    from linear_reference import ref_dge_derivative as ref_fprime

    rng = np.random.default_rng(11)
    T, K, N = 32, 32, 32
    x = rng.standard_normal((T, K)).astype(F32)
    w = (rng.standard_normal((N, K)) * 0.02).astype(F32)
    dy = rng.standard_normal((T, N)).astype(F32)
    on = f4.Recipe.get("nvfp4").replace(dge=True)
    off = f4.Recipe.get("nvfp4")
    _, s_on = f4.linear_forward(x, w, None, on)
    _, s_off = f4.linear_forward(x, w, None, off)
    s_off.gradient_seed = s_on.gradient_seed
    dw_on = f4.linear_backward(dy, s_on)[1]
    dw_off = f4.linear_backward(dy, s_off)[1]
    q = f4.quantize(w, "e2m1", "block2d", "nvfp4", block=16)
    sb = np.repeat(np.repeat(q._float_scales, 16, axis=0), 16, axis=1).astype(F32)
    v = (w * (np.float32(q.tensor_scale) / sb).astype(F32)).astype(F32)
    np.testing.assert_allclose(dw_on, dw_off * ref_fprime(v, "e2m1"), rtol=2e-5, atol=1e-30)
    assert abs(float(q.tensor_scale) - 1) > 0.5  # S far from 1, so leaving it out would show
