"""The quest scale rule (numerics.md §2, Quartet forward) and the clip mask, against float64 numpy.

Reference: per group of 32 along the last axis, μ = mean, σ = sqrt(max(E[x²] − μ², 0))
(float64), s0 = (2.92247856 / 6)·σ + 1e-8, s = 2^floor(log2 s0); v = x / s (float32, exact:
s is a power of two), q = RNE onto e2m1 with saturation at ±6, x̂ = q·s; mask m = |v| < 6.
All-zero groups: s = 1, zeros. (Other saturating formats use 2.92247856 / fmax.)
"""
from __future__ import annotations

import numpy as np
import pytest

import fp4swift as f4
from reference import FMAX, assert_bits_equal, ref_encode, ref_round_values

F32 = np.float32


def ref_quest(x, block=32, fmt="e2m1"):
    """(x̂ float32, scales float32 [groups], mask bool, codes uint8) of QuEST on 1×block groups."""
    x = np.asarray(x, dtype=F32)
    shape = x.shape
    X = x.reshape(-1, block)
    X64 = X.astype(np.float64)
    mu = X64.mean(axis=1)
    var = np.maximum((X64 * X64).mean(axis=1) - mu * mu, 0.0)
    s0 = (2.92247856 / FMAX[fmt]) * np.sqrt(var) + 1e-8
    _, e = np.frexp(s0)
    s = np.ldexp(1.0, e - 1).astype(F32)  # 2^floor(log2 s0)
    zero = np.abs(X).max(axis=1) == 0
    s = np.where(zero, F32(1), s).astype(F32)
    v = (X / s[:, None]).astype(F32)
    q = ref_round_values(v, fmt, "nearest_even")
    xhat = (q * s[:, None]).astype(F32)
    xhat = np.where(zero[:, None], np.copysign(F32(0), X), xhat).astype(F32)
    mask = np.abs(v) < F32(FMAX[fmt])
    codes = ref_encode(np.where(zero[:, None], np.copysign(F32(0), X), q), fmt)
    return xhat.reshape(shape), s, mask.reshape(shape), codes.reshape(-1)


def gaussian(rng, shape, sigma=1.0):
    return (rng.standard_normal(shape) * sigma).astype(F32)


@pytest.mark.parametrize("shape", [(16, 64), (3, 4, 96), (32,), (1, 256)])
@pytest.mark.parametrize("scale", [1.0, 1e-3, 37.0])
def test_fake_quantize_matches_reference(shape, scale):
    rng = np.random.default_rng(int(scale * 1000) + len(shape))
    x = (rng.standard_t(4, size=shape) * scale).astype(F32)
    x.reshape(-1, 32)[0] = 0  # an all-zero group
    x.reshape(-1)[40:72] = F32(2.5 * scale)  # a constant group (σ = 0 → s = 2^-27 → clips)
    if x.size > 72:
        x.reshape(-1)[-1] = -0.0
    want, s, mask, codes = ref_quest(x)
    got = f4.fake_quantize(x, granularity="block", block=32, scale_rule="quest")
    assert_bits_equal(got, want, "quest fake_quantize")
    qt = f4.quantize(x, granularity="block(32)", scale_rule="quest")
    np.testing.assert_array_equal(qt.scales.reshape(-1), s)
    assert_bits_equal(qt.dequantize(), want, "quest dequantize")
    from linear_reference import unpack_nibbles
    np.testing.assert_array_equal(unpack_nibbles(qt.codes, x.size), codes)
    np.testing.assert_array_equal(f4.clip_mask(x), mask)


def test_scales_are_powers_of_two_from_sigma():
    rng = np.random.default_rng(1)
    sig = 10.0 ** rng.uniform(-4, 4, size=(64, 1))
    x = (rng.standard_normal((64, 32)) * sig).astype(F32)
    qt = f4.quantize(x, granularity="block(32)", scale_rule="quest")
    s = qt.scales.reshape(-1).astype(np.float64)
    m, _ = np.frexp(s)
    assert np.all(m == 0.5)
    sd = x.astype(np.float64).std(axis=1)
    s0 = 0.48707948 * sd + 1e-8
    assert np.all((s <= s0) & (s0 < 2 * s))


def test_mask_is_strict_and_packed_lsb_first():
    # one group with s = 0.25; |v| = 5.96 (inside), 6 (boundary: masked out), 7 (clipped)
    base = np.array([0.8, -0.8] * 16, dtype=F32)  # with the edits below σ ≈ 0.893 → s0 ≈ 0.435 → s = 0.25
    x = base.copy()
    x[3] = F32(1.49)  # |v| = 5.96 < 6
    x[5] = F32(-1.5)  # |v| = 6, not < 6
    x[7] = F32(1.75)  # |v| = 7, clipped
    _, s, mask, _ = ref_quest(x)
    assert s[0] == F32(0.25)
    m = f4.clip_mask(x)
    np.testing.assert_array_equal(m, mask)
    assert m[3] and not m[5] and not m[7] and m[0]
    packed = f4.clip_mask(x, packed=True)
    assert packed.dtype == np.uint8 and packed.shape == (4,)
    np.testing.assert_array_equal(packed, np.packbits(mask, bitorder="little"))
    # odd sizes: the last byte is zero-padded
    y = np.ones((3, 33), F32)
    p = f4.clip_mask(y, granularity="row", scale_rule="absmax", packed=True)
    assert p.size == (99 + 7) // 8 and p[-1] >> 3 == 0


def test_mask_other_rules_and_nonfinite():
    rng = np.random.default_rng(2)
    x = gaussian(rng, (8, 64))
    x[2, 5] = np.nan
    m = f4.clip_mask(x, granularity="block(32)", scale_rule="e8m0")
    s = 2.0 ** (np.floor(np.log2(np.abs(np.nan_to_num(x)).reshape(-1, 32).max(axis=1))) - 2)
    v = np.abs(x.reshape(-1, 32) / s[:, None])
    want = (v < 6).reshape(8, 64)
    want[2, :32] = False  # the NaN group
    np.testing.assert_array_equal(m, want)
    # absmax: exactly the group maxima sit on the boundary (|v| = 6), everything else is inside
    y = gaussian(rng, (4, 32))
    ma = f4.clip_mask(y, granularity="row", scale_rule="absmax")
    np.testing.assert_array_equal(~ma, np.abs(y) == np.abs(y).max(axis=1, keepdims=True))


def test_quest_mse_on_gaussian_and_rotated_heavy_tails():
    """What the spec's QuEST gives on data (groups of 32), checked against the float64 reference.

    Note: the issue expected QuEST's relative MSE to be below absmax's on N(0, σ²) data. With
    the spec's (and QuTLASS's) power-of-two floor s = 2^floor(log2(0.487σ)), the clip point 6s
    falls anywhere in (1.46σ, 2.92σ], and the measured relative MSE is ≈ 0.027 against ≈ 0.010
    for absmax and ≈ 0.013 for e8m0 (the un-floored 0.487σ scale would give ≈ 0.012). So this
    test pins the measured value instead, and checks the property Quartet relies on: after a
    Hadamard rotation, heavy-tailed data quantizes about as well as Gaussian data.
    """
    rng = np.random.default_rng(3)
    for sigma in (1.0, 1e-3, 250.0):
        x = gaussian(rng, (512, 256), sigma)
        xh = f4.fake_quantize(x, granularity="block(32)", scale_rule="quest")
        want, _, _, _ = ref_quest(x)
        assert_bits_equal(xh, want, "gaussian")
        rel = float(np.sum((xh.astype(np.float64) - x) ** 2) / np.sum(x.astype(np.float64) ** 2))
        assert 0.018 < rel < 0.036, (sigma, rel)
    t = rng.standard_t(3, size=(512, 256)).astype(F32)

    def rel_mse(d):
        q = f4.fake_quantize(d, granularity="block(32)", scale_rule="quest").astype(np.float64)
        return float(np.sum((q - d) ** 2) / np.sum(d.astype(np.float64) ** 2))

    raw, rot = rel_mse(t), rel_mse(f4.hadamard(t))
    assert rot < 0.25 * raw and rot < 0.036, (raw, rot)


def test_other_saturating_formats_and_e5m2_refused():
    rng = np.random.default_rng(4)
    x = gaussian(rng, (8, 32))
    for fmt in ("e1m2", "e3m0", "e4m3"):
        want, _, mask, _ = ref_quest(x, fmt=fmt)
        assert_bits_equal(f4.fake_quantize(x, fmt=fmt, granularity="block(32)", scale_rule="quest"), want, fmt)
        np.testing.assert_array_equal(f4.clip_mask(x, fmt=fmt), mask)
    with pytest.raises(ValueError, match="saturating"):
        f4.fake_quantize(x, fmt="e5m2", granularity="block(32)", scale_rule="quest")


def test_other_granularities_use_group_statistics():
    rng = np.random.default_rng(5)
    x = gaussian(rng, (6, 32)) * np.arange(1, 7, dtype=F32)[:, None]
    got = f4.fake_quantize(x, granularity="row", scale_rule="quest")
    want, _, _, _ = ref_quest(x, block=32)  # rows of 32 = blocks of 32
    assert_bits_equal(got, want, "row")
    t = f4.quantize(x, granularity="tensor", scale_rule="quest")
    s0 = 0.48707948 * x.astype(np.float64).std() + 1e-8
    s = float(t.scales.reshape(-1)[0])
    assert s <= s0 < 2 * s


def test_thread_count_does_not_change_bits():
    rng = np.random.default_rng(6)
    x = gaussian(rng, (300, 128))
    n = f4.get_num_threads()
    try:
        f4.set_num_threads(1)
        a, ma = f4.fake_quantize(x, granularity="block(32)", scale_rule="quest"), f4.clip_mask(x)
        f4.set_num_threads(3)
        b, mb = f4.fake_quantize(x, granularity="block(32)", scale_rule="quest"), f4.clip_mask(x)
    finally:
        f4.set_num_threads(n)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)


def test_clip_mask_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        f4.clip_mask(np.ones((2, 48), F32))
    with pytest.raises(TypeError):
        f4.clip_mask(np.ones((2, 32), np.int64))
    assert f4.clip_mask(np.zeros((0, 32), F32)).shape == (0, 32)
