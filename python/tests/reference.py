"""Independent numpy references for the codec / quantizer tests (numerics.md §1–3, §5 metrics).

Nothing here calls fp4swift: the element grids are written out from the spec's table
(FP4) or from the bit-field definition (FP8), rounding is done by table look-up in
float64, and the quantizer follows numerics.md §2's float32 operation order step by step.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

F32 = np.float32

# ---------------------------------------------------------------------------
# Element grids (numerics.md §1). MAGS[fmt][c] is the value of magnitude code c.
# ---------------------------------------------------------------------------

FP4_FORMATS = ("e2m1", "e1m2", "e3m0")
FP8_FORMATS = ("e4m3", "e5m2")
ELEMENT_FORMATS = FP4_FORMATS + FP8_FORMATS


def _fp8_magnitudes(man_bits: int, bias: int, count: int) -> np.ndarray:
    out = []
    for c in range(count):
        e, m = c >> man_bits, c & ((1 << man_bits) - 1)
        if e == 0:
            out.append(m * 2.0 ** (1 - bias - man_bits))
        else:
            out.append(((1 << man_bits) + m) * 2.0 ** (e - bias - man_bits))
    return np.array(out, dtype=np.float64)


MAGS: Dict[str, np.ndarray] = {
    # The spec's table, verbatim.
    "e2m1": np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64),
    "e1m2": np.array([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5], dtype=np.float64),
    "e3m0": np.array([0, 0.25, 0.5, 1, 2, 4, 8, 16], dtype=np.float64),
    # e4m3: bias 7, codes 0x00..0x7E finite (0x7F is NaN), max 448.
    "e4m3": _fp8_magnitudes(3, 7, 0x7F),
    # e5m2: bias 15, codes 0x00..0x7B finite, 0x7C inf, 0x7D..0x7F NaN, max 57344.
    "e5m2": _fp8_magnitudes(2, 15, 0x7C),
}
assert MAGS["e4m3"][-1] == 448.0 and MAGS["e5m2"][-1] == 57344.0

BITS = {"e2m1": 4, "e1m2": 4, "e3m0": 4, "e4m3": 8, "e5m2": 8}
FMAX = {f: float(MAGS[f][-1]) for f in ELEMENT_FORMATS}
# emax of the e8m0 scale rule: exponent of the format's largest binade.
EMAX = {"e2m1": 2, "e1m2": 1, "e3m0": 4, "e4m3": 8, "e5m2": 15}
SATURATES = {"e2m1": True, "e1m2": True, "e3m0": True, "e4m3": True, "e5m2": False}
E5M2_INF_CODE = 0x7C


def sign_bit(fmt: str) -> int:
    return 1 << (BITS[fmt] - 1)


def midpoints(fmt: str) -> np.ndarray:
    m = MAGS[fmt]
    return (m[:-1] + m[1:]) / 2


# ---------------------------------------------------------------------------
# Counter-based RNG of stochastic rounding (SplitMix64, see Rounding.swift).
# ---------------------------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, n: int) -> np.ndarray:
    """u_i for i in 0..n-1: top 24 bits of mix(mix(seed) + (i+1)·γ), times 2^-24 (float64, exact)."""
    key = _mix(np.array([seed], dtype=np.uint64))
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _mix(key + (i + np.uint64(1)) * _GAMMA)
    return (z >> np.uint64(40)).astype(np.float64) * 2.0 ** -24


def random_bits(seed: int, n: int, r: int) -> np.ndarray:
    """R_i for i in 0..n-1: the top r bits of the same mix(mix(seed) + (i+1)·γ) (int64), the draw of
    stochastic rounding with stochastic_bits = r (numerics.md §1)."""
    key = _mix(np.array([seed], dtype=np.uint64))
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _mix(key + (i + np.uint64(1)) * _GAMMA)
    return (z >> np.uint64(64 - r)).astype(np.int64)


# ---------------------------------------------------------------------------
# Element rounding
# ---------------------------------------------------------------------------


def round_magnitude_codes(a: np.ndarray, fmt: str, rounding: str = "nearest_even",
                          u: Optional[np.ndarray] = None, saturate: bool = False) -> np.ndarray:
    """Magnitude codes of finite magnitudes a >= 0 (float64), by table look-up.

    Saturating formats clip to max first, and so does every format when `saturate` (inside a
    quantizer, numerics.md §1). Otherwise e5m2 is IEEE-like: its grid continues with
    65536 = code 0x7C, which stands for +inf (so ties at 61440 go to inf, as in IEEE).
    """
    a = np.asarray(a, dtype=np.float64)
    mags = MAGS[fmt]
    saturating = SATURATES[fmt] or saturate
    if saturating:
        a = np.minimum(a, mags[-1])
        ext = mags
    else:
        ext = np.append(mags, 2.0 * 2.0 ** np.floor(np.log2(mags[-1])))  # 65536 for e5m2
    last = len(ext) - 1
    idx = np.clip(np.searchsorted(ext, a, side="right") - 1, 0, last)
    hi_idx = np.minimum(idx + 1, last)
    lo, hi = ext[idx], ext[hi_idx]
    on_grid = (a == lo) | (idx == last)
    if rounding in ("nearest_even", "nearest_away"):
        mid = (lo + hi) / 2
        up = a > mid
        tie = a == mid
        if rounding == "nearest_even":
            up |= tie & (idx % 2 == 1)  # the even magnitude code wins
        else:
            up |= tie
    elif rounding == "stochastic":
        assert u is not None and u.shape == a.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = (a - lo) / (hi - lo)
        up = frac > u
    else:
        raise ValueError(rounding)
    up &= ~on_grid
    out = np.where(up, hi_idx, idx)
    if not saturating:
        out = np.where(a > ext[-1], last, out)
    return out.astype(np.int64)


def magnitude_values(codes: np.ndarray, fmt: str) -> np.ndarray:
    """float64 value of magnitude codes from round_magnitude_codes (e5m2 code 0x7C = inf)."""
    ext = np.append(MAGS[fmt], np.inf) if not SATURATES[fmt] else MAGS[fmt]
    return ext[codes]


def ref_encode(x: np.ndarray, fmt: str, rounding: str = "nearest_even", seed: int = 0) -> np.ndarray:
    """Sign-magnitude codes of finite float32 values (numerics.md §1)."""
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    u = uniforms(seed, flat.size) if rounding == "stochastic" else None
    mag = round_magnitude_codes(np.abs(flat.astype(np.float64)), fmt, rounding, u)
    codes = mag | (np.signbit(flat).astype(np.int64) * sign_bit(fmt))
    return codes.astype(np.uint8).reshape(x.shape)


def ref_round_values(v: np.ndarray, fmt: str, rounding: str = "nearest_even",
                     u: Optional[np.ndarray] = None) -> np.ndarray:
    """Rounded grid values of float32 v (sign kept, -0 kept), as float32."""
    v = np.asarray(v, dtype=np.float32)
    mag = magnitude_values(round_magnitude_codes(np.abs(v.astype(np.float64)), fmt, rounding, u), fmt)
    return np.copysign(mag.astype(np.float32), v)


def ref_decode_table(fmt: str) -> np.ndarray:
    """float64 value of every code of an element format (2^bits entries)."""
    n = 1 << (BITS[fmt] - 1)
    pos = np.full(n, np.nan)
    pos[: len(MAGS[fmt])] = MAGS[fmt]
    if fmt == "e5m2":
        pos[E5M2_INF_CODE] = np.inf  # 0x7D..0x7F stay NaN
    return np.concatenate([pos, -pos])


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Element 2i in the low nibble, 2i+1 in the high nibble, odd count padded with 0."""
    c = np.asarray(codes, dtype=np.uint8).reshape(-1)
    if c.size % 2:
        c = np.append(c, np.uint8(0))
    return (c[0::2] | (c[1::2] << 4)).astype(np.uint8)


# ---------------------------------------------------------------------------
# Granularity
# ---------------------------------------------------------------------------


def matrix_shape(shape: Tuple[int, ...]) -> Tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    cols = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return int(rows), int(cols)


def group_tile(granularity: str, block: int, rows: int, cols: int) -> Tuple[int, int]:
    """(group_rows, group_cols) of one scale group."""
    if granularity == "tensor":
        return max(rows, 1), max(cols, 1)
    if granularity == "row":
        return 1, max(cols, 1)
    if granularity == "column":
        return max(rows, 1), 1
    if granularity == "block":
        return 1, block
    if granularity == "block2d":
        return block, block
    raise ValueError(granularity)


def group_ids(granularity: str, block: int, rows: int, cols: int) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Group index of every element of the [rows, cols] matrix (row-major group order),
    and the (tile_rows, tile_cols) grid of groups."""
    gr, gc = group_tile(granularity, block, rows, cols)
    tile_rows, tile_cols = rows // gr, cols // gc
    r = np.arange(rows)[:, None] // gr
    c = np.arange(cols)[None, :] // gc
    return (r * tile_cols + c).astype(np.int64), (tile_rows, tile_cols)


def parse_granularity(granularity: str, block: Optional[int] = None) -> Tuple[str, int]:
    if granularity.startswith("block2d("):
        return "block2d", int(granularity[8:-1])
    if granularity.startswith("block("):
        return "block", int(granularity[6:-1])
    if granularity in ("block", "block2d"):
        return granularity, block if block is not None else (32 if granularity == "block" else 16)
    return granularity, 0


# ---------------------------------------------------------------------------
# Scale rules (numerics.md §2), float32 arithmetic in the spec's order
# ---------------------------------------------------------------------------


def _floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) for finite a > 0 (exact, via frexp in float64)."""
    _, e = np.frexp(np.asarray(a, dtype=np.float64))
    return e.astype(np.int64) - 1


def _pow2_f32(k: np.ndarray) -> np.ndarray:
    return np.ldexp(np.ones(np.shape(k)), np.asarray(k, dtype=np.int64)).astype(np.float32)


def e4m3_rne_sat(t: np.ndarray) -> np.ndarray:
    """float32 value of e4m3 RNE with saturation to ±448 (independent table look-up)."""
    return ref_round_values(np.asarray(t, dtype=np.float32), "e4m3", "nearest_even")


class GroupScales:
    """Per-group scales of one tensor as the spec defines them."""

    def __init__(self, scale: np.ndarray, zero: np.ndarray, tensor_scale: float = 1.0,
                 scale_bytes: Optional[np.ndarray] = None):
        self.scale = scale  # float32 per group (nvfp4: float(sb))
        self.zero = zero  # bool per group: encodes zeros
        self.tensor_scale = np.float32(tensor_scale)
        self.scale_bytes = scale_bytes


def ref_group_scales(amax: np.ndarray, fmt: str, scale_rule: str, tensor_amax: Optional[float] = None) -> GroupScales:
    """Scales of groups with (finite) absolute maxima `amax` (float32 array)."""
    amax = np.asarray(amax, dtype=np.float32)
    fmax = np.float32(FMAX[fmt])
    zero = amax == 0
    pos = np.where(zero, np.float32(1), amax)  # placeholder for the zero groups
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if scale_rule == "absmax":
            s = (pos / fmax).astype(np.float32)
            return GroupScales(np.where(zero, np.float32(1), s), zero)
        if scale_rule == "pow2":
            # Smallest k with amax <= fmax·2^k; float64 products are exact here.
            a64 = pos.astype(np.float64)
            k = np.ceil(np.log2(a64 / float(fmax))).astype(np.int64)
            for _ in range(4):
                k = np.where(a64 > np.ldexp(float(fmax), k), k + 1, k)
                k = np.where(a64 <= np.ldexp(float(fmax), k - 1), k - 1, k)
            assert np.all(a64 <= np.ldexp(float(fmax), k)) and np.all(a64 > np.ldexp(float(fmax), k - 1))
            return GroupScales(np.where(zero, np.float32(1), _pow2_f32(k)), zero)
        if scale_rule == "e8m0":
            k = np.clip(_floor_log2(pos) - EMAX[fmt], -127, 127)
            k = np.where(zero, -127, k)
            return GroupScales(_pow2_f32(k), zero, scale_bytes=(k + 127).astype(np.uint8))
        if scale_rule == "absmax_div3":
            s = (_pow2_f32(_floor_log2(pos)) / np.float32(3)).astype(np.float32)
            return GroupScales(np.where(zero, np.float32(1), s), zero)
        if scale_rule == "nvfp4":
            assert fmt == "e2m1"
            ta = np.float32(tensor_amax if tensor_amax is not None else (amax.max() if amax.size else 0))
            S = np.float32(np.float32(448 * 6) / ta) if ta != 0 else np.float32(1)
            if not np.isfinite(S):
                S = np.float32(1)
            t = ((amax * S).astype(np.float32) / np.float32(6)).astype(np.float32)
            sb = e4m3_rne_sat(t)
            sb_bytes = ref_encode(sb, "e4m3")
            return GroupScales(sb, sb == 0, tensor_scale=float(S), scale_bytes=sb_bytes)
    raise ValueError(scale_rule)


# ---------------------------------------------------------------------------
# The quantizer (numerics.md §2)
# ---------------------------------------------------------------------------


class RefQuantized:
    def __init__(self, xhat, codes, scales: GroupScales, tiles, nonfinite_groups):
        self.xhat = xhat
        self.codes = codes  # one code per element (uint8, flat order), zero groups get signed zeros
        self.scales = scales
        self.tiles = tiles
        self.nonfinite_groups = nonfinite_groups


def ref_quantize(x, fmt: str = "e2m1", granularity: str = "row", scale_rule: str = "absmax",
                 rounding: str = "nearest_even", block: Optional[int] = None, seed: int = 0) -> RefQuantized:
    """Reference fake quantization + codes, float32 in the spec's order.

    Groups holding NaN/inf come out all-NaN and are left out of nvfp4's tensor amax.
    """
    shape = np.shape(x)  # np.ascontiguousarray would turn a 0-d array into shape (1,)
    x32 = np.array(x, dtype=np.float32, order="C").reshape(shape)
    rows, cols = matrix_shape(shape)
    kind, n = parse_granularity(granularity, block)
    X = x32.reshape(rows, cols)
    G, tiles = group_ids(kind, n, rows, cols)
    ngroups = tiles[0] * tiles[1]
    absx = np.abs(X)
    finite = np.isfinite(X)
    bad = np.zeros(ngroups, dtype=bool)
    np.logical_or.at(bad, G.reshape(-1), ~finite.reshape(-1))
    amax = np.zeros(ngroups, dtype=np.float32)
    np.maximum.at(amax, G.reshape(-1), np.where(finite, absx, 0).reshape(-1))
    amax[bad] = 0
    tensor_amax = amax.max() if ngroups else np.float32(0)
    gs = ref_group_scales(amax, fmt, scale_rule, tensor_amax=tensor_amax)

    u = uniforms(seed, rows * cols).reshape(rows, cols) if rounding == "stochastic" else None
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if scale_rule == "nvfp4":
            S = gs.tensor_scale
            ratio = (S / gs.scale).astype(np.float32)  # inf for sb = 0 groups, masked below
            v = (X * ratio[G]).astype(np.float32)
        else:
            v = (X / gs.scale[G]).astype(np.float32)
    zero_el = gs.zero[G]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        v = np.where(finite & ~zero_el, v, np.float32(0))
        mag = round_magnitude_codes(np.abs(v.astype(np.float64)), fmt, rounding, u, saturate=True)
        q = np.copysign(magnitude_values(mag, fmt).astype(np.float32), v)
        if scale_rule == "nvfp4":
            xhat = ((q * gs.scale[G]).astype(np.float32) / gs.tensor_scale).astype(np.float32)
        else:
            xhat = (q * gs.scale[G]).astype(np.float32)
    xhat = np.where(zero_el, np.copysign(np.float32(0), X), xhat)
    xhat = np.where(bad[G], np.float32(np.nan), xhat).astype(np.float32)
    signs = np.signbit(X).astype(np.int64) * sign_bit(fmt)
    codes = np.where(zero_el, 0, mag) | signs
    return RefQuantized(xhat.reshape(shape), codes.astype(np.uint8).reshape(-1), gs, tiles, int(bad.sum()))


def ref_fake_quantize(x, **kw) -> np.ndarray:
    return ref_quantize(x, **kw).xhat


# ---------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Bit-exact float32 equality: signed zeros must match; NaNs match any NaN."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}, expected float32"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    expected = expected.astype(np.float32)
    an, en = np.isnan(actual), np.isnan(expected)
    ab = np.where(an, np.uint32(0x7FC00000), actual.view(np.uint32))
    eb = np.where(en, np.uint32(0x7FC00000), expected.view(np.uint32))
    bad = np.flatnonzero((ab != eb).reshape(-1))
    if bad.size:
        i = bad[:8]
        raise AssertionError(
            f"{what}: {bad.size} of {actual.size} elements differ; first flat indices {i.tolist()}: "
            f"got {actual.reshape(-1)[i].tolist()}, expected {expected.reshape(-1)[i].tolist()}")


def ref_fidelity(x: np.ndarray, xh: np.ndarray) -> Dict[str, float]:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(xh, dtype=np.float64).reshape(-1)
    e = a - b
    return {
        "cosine": float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))),
        "mse": float(np.mean(e * e)),
        "snr_db": float(10 * np.log10(np.sum(a * a) / np.sum(e * e))),
    }
