"""The reference-implementation scale rules against torchao itself (numerics.md §2, §9).

torchao's MX and NVFP4 casts run on the CPU in plain torch, so the oracle here is the installed
package, not a re-implementation of it:

- `e8m0` (OCP floor), `e8m0_ceil`, `e8m0_even`, `e8m0_rceil` against
  `torchao.prototype.mx_formats.mx_tensor.to_mx` with `ScaleCalculationMode` FLOOR, CEIL, EVEN,
  RCEIL, dequantized by its `to_dtype`, for e2m1, e4m3 and e5m2 elements in blocks of 32;
- `nvfp4_torchao` against `NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(amax))`
  and its `dequantize`, blocks of 16.

Every comparison counts mismatching elements of the dequantized values (bit for bit, signed
zeros included, any NaN equal to any NaN), of the element codes and of the scale bytes, and
requires 0, on random, heavy-tailed, tiny, huge, on-grid, all-zero and NaN-holding blocks and on
every finite float16 bit pattern laid out in blocks (in order and shuffled). The places where
fp4swift knowingly differs (numerics.md §2 and §10) have their own tests that pin the exact set of
differing blocks.

The module is skipped, with the reason, when torchao (or torch) is not installed; CI installs it
through the `test` extras.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import fp4swift as f4

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao: the `test` extras)")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

F32 = np.float32
MODES = {"e8m0": ScaleCalculationMode.FLOOR, "e8m0_ceil": ScaleCalculationMode.CEIL,
         "e8m0_even": ScaleCalculationMode.EVEN, "e8m0_rceil": ScaleCalculationMode.RCEIL}
ELEM = {"e2m1": torch.float4_e2m1fn_x2, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
EMAX = {"e2m1": 2, "e4m3": 8, "e5m2": 15}


# ---------------------------------------------------------------------------------------
# Inputs


def _grid_values(rng: np.random.Generator, shape) -> np.ndarray:
    mags = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=F32)
    v = rng.choice(mags, size=shape) * rng.choice([-1, 1], size=shape).astype(F32)
    return (v * np.exp2(rng.integers(-20, 20, size=(shape[0], 1)))).astype(F32)


@functools.lru_cache(maxsize=None)
def patterns(block: int) -> dict:
    """name -> float32 [rows, cols] input, cols a multiple of `block`."""
    rng = np.random.default_rng(1707)
    rows, cols = 64, 8 * block
    out = {
        "gaussian": rng.standard_normal((rows, cols)).astype(F32),
        "gaussian_scaled": (rng.standard_normal((rows, cols)) * np.exp2(rng.integers(-30, 30, size=(rows, 1)))).astype(F32),
        "heavy_tailed": rng.standard_t(1.5, size=(rows, cols)).astype(F32),
        "cauchy_outliers": (rng.standard_cauchy((rows, cols)) * 10.0 ** rng.integers(-3, 4, size=(rows, cols))).astype(F32),
        "uniform_mantissas": (rng.uniform(1, 2, (rows, cols)) * np.exp2(rng.integers(-8, 8, size=(rows, cols)))).astype(F32),
        "on_grid": _grid_values(rng, (rows, cols)),
        "huge": (rng.uniform(-1, 1, (rows, cols)) * 3.4e38).astype(F32),
        "near_float32_max": np.where(rng.random((rows, cols)) < 0.5, np.finfo(F32).max,
                                     rng.uniform(-3e38, 3e38, (rows, cols))).astype(F32),
        "all_zero_blocks": np.where(rng.random((rows, cols // block, 1)) < 0.5, 0.0,
                                    rng.standard_normal((rows, cols // block, block))).reshape(rows, cols).astype(F32)
        * np.where(rng.random((rows, cols)) < 0.5, -1, 1).astype(F32),
    }
    # Tiny: normal float32 values down to 2^-120 and subnormals mixed into blocks.
    tiny = (rng.uniform(0.5, 1, (rows, cols)) * np.exp2(rng.integers(-120, -90, size=(rows, 1)))).astype(F32)
    sub = (rng.integers(1, 1 << 23, size=(rows, cols)).astype(np.uint32)).view(F32)
    out["tiny"] = (tiny * np.where(rng.random((rows, cols)) < 0.5, -1, 1)).astype(F32)
    out["tiny_with_subnormals"] = np.where(rng.random((rows, cols)) < 0.3, sub, tiny).astype(F32)
    out["subnormal_blocks"] = (sub * np.where(rng.random((rows, cols)) < 0.5, -1, 1)).astype(F32)
    # Exact powers of two and their neighbours (scale boundaries of every mode).
    k = rng.integers(-100, 100, size=(rows, cols))
    ulp = rng.integers(-2, 3, size=(rows, cols)).astype(np.int32)
    base = np.exp2(k).astype(F32) * F32(6)
    out["boundaries"] = (base.view(np.int32) + ulp).view(F32) * np.where(rng.random((rows, cols)) < 0.5, -1, 1).astype(F32)
    return out


@functools.lru_cache(maxsize=None)
def float16_patterns() -> dict:
    """Every finite float16 bit pattern as float32, in order and shuffled, 63488 values (32 · 1984)."""
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    h = h[np.isfinite(h)].astype(F32)
    assert h.size == 63488
    rng = np.random.default_rng(16)
    return {"float16_in_order": h.reshape(-1, 32 * 31), "float16_shuffled": rng.permutation(h).reshape(-1, 32 * 31)}


def with_nans(x: np.ndarray, block: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    y = x.copy().reshape(-1)
    blocks = rng.choice(y.size // block, size=max(1, y.size // block // 7), replace=False)
    y[blocks * block + rng.integers(0, block, size=blocks.size)] = np.nan
    return y.reshape(x.shape)


# ---------------------------------------------------------------------------------------
# The two sides


def torchao_mx(x: np.ndarray, fmt: str, rule: str):
    """(scale bytes [rows, cols/32], element codes (FP4 packed / FP8 bytes), dequantized float32)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scale, data = to_mx(t, ELEM[fmt], 32, MODES[rule])
        deq = to_dtype(data, scale, ELEM[fmt], 32, torch.float32)
    codes = data.view(torch.uint8).numpy().reshape(-1)
    return scale.view(torch.uint8).numpy().reshape(x.shape[0], -1), codes, deq.numpy()


def torchao_nvfp4(x: np.ndarray):
    """(P, scale bytes, packed codes, dequantized), P from the amax of the finite values."""
    finite = np.abs(x[np.isfinite(x)])
    amax = torch.tensor(float(finite.max()) if finite.size else 0.0, dtype=torch.float32)
    P = per_tensor_amax_to_scale(amax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = NVFP4Tensor.to_nvfp4(torch.from_numpy(np.ascontiguousarray(x)), per_tensor_scale=P)
        deq = t.dequantize(torch.float32)
    return (float(P), t.scale.view(torch.uint8).numpy().reshape(x.shape[0], -1),
            t.qdata.view(torch.uint8).numpy().reshape(-1), deq.numpy())


def mismatches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flat indices where two float32 arrays differ bit for bit (NaN equals NaN)."""
    a, b = np.asarray(a, F32).reshape(-1), np.asarray(b, F32).reshape(-1)
    an, bn = np.isnan(a), np.isnan(b)
    ab = np.where(an, np.uint32(0x7FC00000), a.view(np.uint32))
    bb = np.where(bn, np.uint32(0x7FC00000), b.view(np.uint32))
    return np.flatnonzero(ab != bb)


def report(what: str, bad: np.ndarray, got, want) -> str:
    i = bad[:6]
    return (f"{what}: {bad.size} mismatching elements; first flat indices {i.tolist()}: "
            f"fp4swift {np.asarray(got).reshape(-1)[i].tolist()}, torchao {np.asarray(want).reshape(-1)[i].tolist()}")


def compare_mx(x: np.ndarray, fmt: str, rule: str, what: str, finite: bool = True) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN groups: the propagate warning
        ours = f4.fake_quantize(x, fmt=fmt, granularity="block(32)", scale_rule=rule)
    sb, codes, deq = torchao_mx(x, fmt, rule)
    bad = mismatches(ours, deq)
    assert bad.size == 0, report(f"{what} {fmt} {rule} dequantized", bad, ours, deq)
    if finite:
        q = f4.quantize(x, fmt=fmt, granularity="block(32)", scale_rule=rule)
        assert q.scales.dtype == np.uint8
        bad = np.flatnonzero(q.scales.reshape(-1) != sb.reshape(-1))
        assert bad.size == 0, report(f"{what} {fmt} {rule} scale bytes", bad, q.scales, sb)
        bad = np.flatnonzero(q.codes != codes)
        assert bad.size == 0, report(f"{what} {fmt} {rule} codes", bad, q.codes, codes)
        assert np.array_equal(q.dequantize().view(np.uint32), ours.view(np.uint32))


def compare_nvfp4(x: np.ndarray, what: str, finite: bool = True) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = f4.fake_quantize(x, fmt="e2m1", granularity="block(16)", scale_rule="nvfp4_torchao")
    P, sb, codes, deq = torchao_nvfp4(x)
    bad = mismatches(ours, deq)
    assert bad.size == 0, report(f"{what} nvfp4_torchao dequantized", bad, ours, deq)
    if finite:
        q = f4.quantize(x, fmt="e2m1", granularity="block(16)", scale_rule="nvfp4_torchao")
        assert np.float32(q.tensor_scale).view(np.uint32) == np.float32(P).view(np.uint32)
        bad = np.flatnonzero(q.scales.reshape(-1) != sb.reshape(-1))
        assert bad.size == 0, report(f"{what} nvfp4_torchao scale bytes", bad, q.scales, sb)
        bad = np.flatnonzero(q.codes != codes)
        assert bad.size == 0, report(f"{what} nvfp4_torchao codes", bad, q.codes, codes)
        assert np.array_equal(q.dequantize().view(np.uint32), ours.view(np.uint32))


def _byte0_rows(x: np.ndarray, fmt: str) -> np.ndarray:
    """Blocks where torchao's FLOOR divides by 2^-126 instead of 2^-127 (0 < amax < 2^(emax-126))."""
    a = np.abs(x.reshape(-1, 32)).max(axis=1)
    return (a > 0) & (a < np.exp2(EMAX[fmt] - 126))


# ---------------------------------------------------------------------------------------
# E8M0 modes


MX_CASES = [(f, r) for f in ("e2m1", "e4m3", "e5m2") for r in MODES]


def _rceil_log2_rows(x: np.ndarray, fmt: str) -> np.ndarray:
    """Blocks where torchao's CPU RCEIL (ceil of a float32 torch.log2) and the exact rule disagree:
    d = amax / fmax a few ulps above a power of two 2^k with |k| ≥ 4, whose float32 log2 rounds to k."""
    a = np.abs(x.reshape(-1, 32)).max(axis=1).astype(F32)
    d = (a / F32(f4.format_info(fmt).max_value)).astype(F32)
    with np.errstate(divide="ignore"):
        tao = np.clip(torch.ceil(torch.log2(torch.from_numpy(d))).numpy(), -127, 127) + 127
    bits = d.view(np.uint32)
    field, mant = (bits >> 23).astype(np.int64), bits & 0x7FFFFF
    exact = np.where(field == 0, (mant > 0x400000).astype(np.int64), np.minimum(field + (mant != 0), 254))
    differ = tao != exact
    # The characterization: only just above a power of two (mantissa < 2^-16), only for |k| ≥ 4.
    k = field - 127
    assert np.all(differ <= ((mant > 0) & (mant < (1 << 7)) & (np.abs(k) >= 4)))
    return differ


def _drop_blocks(x: np.ndarray, drop: np.ndarray) -> np.ndarray:
    kept = x.reshape(-1, 32)[~drop]
    return kept[: (kept.shape[0] // 8) * 8].reshape(-1, 256)


@pytest.mark.parametrize("fmt,rule", MX_CASES)
@pytest.mark.parametrize("pattern", sorted(patterns(32)))
def test_e8m0_modes_match_torchao(fmt, rule, pattern):
    x = patterns(32)[pattern]
    if rule == "e8m0":
        # OCP's 2^-127 for byte-0 blocks: torchao's FLOOR differs there (test_e8m0_floor_byte0_difference).
        x = _drop_blocks(x, _byte0_rows(x, fmt))
    if rule == "e8m0_rceil":
        # torchao's float32 log2 just above powers of two (test_rceil_is_exact_where_torchao_cpu_log2_rounds).
        x = _drop_blocks(x, _rceil_log2_rows(x, fmt))
    if x.size == 0:
        return  # every block is in the documented difference (subnormal_blocks under e8m0)
    compare_mx(x, fmt, rule, pattern)


@pytest.mark.parametrize("fmt,rule", MX_CASES)
@pytest.mark.parametrize("layout", ["float16_in_order", "float16_shuffled"])
def test_e8m0_modes_match_torchao_on_every_float16(fmt, rule, layout):
    compare_mx(float16_patterns()[layout], fmt, rule, layout)


@pytest.mark.parametrize("fmt,rule", MX_CASES)
@pytest.mark.parametrize("pattern", ["gaussian", "heavy_tailed", "all_zero_blocks", "float16"])
def test_e8m0_modes_match_torchao_with_nan_blocks(fmt, rule, pattern):
    x = float16_patterns()["float16_shuffled"] if pattern == "float16" else patterns(32)[pattern]
    compare_mx(with_nans(x, 32), fmt, rule, pattern + "+NaN", finite=False)


def test_e8m0_floor_byte0_difference():
    """The one place `e8m0` (OCP, unchanged) and torchao's FLOOR differ: a block with
    0 < amax < 2^(emax-126) gets byte 0 in both, torchao divides it by 2^-126 (its float32
    min-normal clamp) and decodes with 2^-127; fp4swift divides by 2^-127. e8m0_ceil and
    e8m0_even follow torchao there (numerics.md §2)."""
    x = patterns(32)["subnormal_blocks"]
    ours = f4.fake_quantize(x, granularity="block(32)", scale_rule="e8m0")
    _, _, deq = torchao_mx(x, "e2m1", "e8m0")
    bad_blocks = np.unique(mismatches(ours, deq) // 32)
    byte0 = np.flatnonzero(_byte0_rows(x, "e2m1"))
    assert bad_blocks.size > 0 and set(bad_blocks) <= set(byte0)
    # ... and there torchao's x-hat is exactly fp4swift's e8m0 with the element scale doubled.
    xb = x.reshape(-1, 32)[bad_blocks]
    want = f4.fake_quantize(xb * F32(2.0 ** -1), granularity="block(32)", scale_rule="e8m0")
    assert mismatches(want, deq.reshape(-1, 32)[bad_blocks]).size == 0


def test_e8m0_e5m2_saturates_like_torchao():
    """e5m2 under `e8m0`: v in (57344, 65536) saturates to 57344 inside the quantizer
    (numerics.md §1), as torchao clamps before its cast: no inf, and every element agrees."""
    x = patterns(32)["uniform_mantissas"]
    ours = f4.fake_quantize(x, fmt="e5m2", granularity="block(32)", scale_rule="e8m0")
    _, _, deq = torchao_mx(x, "e5m2", "e8m0")
    assert np.isfinite(ours).all()
    assert mismatches(ours, deq).size == 0


def test_rceil_is_exact_where_torchao_cpu_log2_rounds():
    """e8m0_rceil computes cuBLAS's rule exactly (the e8m0 of amax/fmax rounded up, as
    cvt.rp.satfinite.ue8m0x2.f32 and Transformer Engine's float_to_e8m0 do). torchao's CPU
    fallback takes ceil(log2(d)) in float32, which rounds d = 2^k·(1 + 2^-23) down to k for
    |k| ≥ 4; that is the only difference, and it is pinned here."""
    ks = np.arange(-100, 101)
    d = (np.exp2(ks).astype(F32).view(np.int32) + 1).view(F32)  # 2^k (1 + 2^-23)
    amax = (d * F32(6)).astype(F32)  # amax / 6 rounds back to d for these k
    assert np.array_equal((amax / F32(6)).view(np.uint32), d.view(np.uint32))
    x = np.zeros((ks.size, 32), dtype=F32)
    x[:, 0] = amax
    q = f4.quantize(x, granularity="block(32)", scale_rule="e8m0_rceil")
    exact = np.clip(ks + 1, -127, 127) + 127  # d is just above 2^k: rounds up to 2^(k+1)
    assert np.array_equal(q.scales.reshape(-1), exact)
    sb, _, _ = torchao_mx(x, "e2m1", "e8m0_rceil")
    differ = ks[sb.reshape(-1) != exact]
    assert set(differ) <= {k for k in ks if abs(k) >= 4}


# ---------------------------------------------------------------------------------------
# NVFP4


def _degenerate(x: np.ndarray) -> bool:
    """Whether torchao's NVFP4 arithmetic overflows for x: (1/P)·2^6 is not finite in float32."""
    a = np.abs(x[np.isfinite(x)]).max() if np.isfinite(x).any() else F32(0)
    P = F32(a) / F32(2688)
    with np.errstate(divide="ignore", over="ignore"):
        return not np.isfinite((F32(1) / P) * F32(64))


@pytest.mark.parametrize("pattern", sorted(patterns(16)))
def test_nvfp4_torchao_matches_torchao(pattern):
    x = patterns(16)[pattern]
    if _degenerate(x):
        # subnormal_blocks: a tensor amax near 1e-38 (test_nvfp4_torchao_degenerate_tensors).
        got = f4.fake_quantize(x, granularity="block(16)", scale_rule="nvfp4_torchao")
        assert np.array_equal(got.view(np.uint32), (x * 0).view(np.uint32))
        return
    compare_nvfp4(x, pattern)


@pytest.mark.parametrize("layout", ["float16_in_order", "float16_shuffled"])
def test_nvfp4_torchao_matches_torchao_on_every_float16(layout):
    compare_nvfp4(float16_patterns()[layout], layout)


@pytest.mark.parametrize("pattern", ["gaussian", "heavy_tailed", "all_zero_blocks", "tiny", "float16"])
def test_nvfp4_torchao_matches_torchao_with_nan_blocks(pattern):
    """torchao is given P from the finite values' amax, which is what fp4swift uses (numerics.md §2)."""
    x = float16_patterns()["float16_shuffled"] if pattern == "float16" else patterns(16)[pattern]
    compare_nvfp4(with_nans(x, 16), pattern + "+NaN", finite=False)


@pytest.mark.parametrize("scale", [1e-30, 1e-33, 6e-34])
def test_nvfp4_torchao_tiny_tensors(scale):
    """Down to amax ≈ 2688·2^-122 torchao's arithmetic stays finite and fp4swift matches it."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 64)) * scale).astype(F32)
    compare_nvfp4(x, f"tensor amax {scale}")


def test_nvfp4_torchao_degenerate_tensors():
    """Where torchao's arithmetic overflows (an all-zero tensor: P = 0, NaN everywhere; amax below
    about 2^-110.6: 1/P or (1/P)/sb is inf), fp4swift uses P = 1: every element becomes a signed zero."""
    for x in (np.zeros((2, 32), F32), np.full((2, 32), -1e-36, F32), np.full((2, 32), 1e-40, F32)):
        got = f4.fake_quantize(x, granularity="block(16)", scale_rule="nvfp4_torchao")
        assert np.array_equal(got.view(np.uint32), (x * 0).view(np.uint32))
        assert f4.quantize(x, granularity="block(16)", scale_rule="nvfp4_torchao").tensor_scale == 1.0
    _, _, _, deq = torchao_nvfp4(np.zeros((2, 32), F32))
    assert np.all(np.isnan(deq))


def test_nvfp4_and_nvfp4_torchao_differ():
    """The two NVFP4 formulas are different rules: x̂ = (q·sb)/S against q·(P·sb) differ in the
    last bits of most non-zero elements, and on wide-range data the block scales and codes differ too
    (numerics.md §2 gives the measured shares)."""
    x = patterns(16)["gaussian"]
    te = f4.fake_quantize(x, granularity="block(16)", scale_rule="nvfp4")
    ta = f4.fake_quantize(x, granularity="block(16)", scale_rule="nvfp4_torchao")
    assert mismatches(te, ta).size > x.size // 20
    y = patterns(16)["gaussian_scaled"]
    qa = f4.quantize(y, granularity="block(16)", scale_rule="nvfp4")
    qb = f4.quantize(y, granularity="block(16)", scale_rule="nvfp4_torchao")
    assert np.any(qa.scales != qb.scales)
