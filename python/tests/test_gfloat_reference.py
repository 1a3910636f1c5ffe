"""Element rounding and r-bit stochastic rounding against gfloat (Graphcore's generic float
library), a second oracle beside ml_dtypes (numerics.md §1, §9).

- Every FP4 and FP8 element format fp4swift has (e2m1, e1m2, e3m0, e4m3, e5m2), described to
  gfloat as a FormatInfo built from `f4.format_info`: nearest-even and nearest-away rounding of
  every finite float16 bit pattern, every grid midpoint ± 1 ulp and random float32 values, bit for
  bit (signed zeros included). FP4 formats and e4m3 saturate, e5m2 overflows to inf, as §1 says.
- Stochastic rounding with r random bits: gfloat's `RoundMode.StochasticFastest` adds r random bits
  below the kept precision and rounds away on the carry, which is the rule numerics.md §1 states
  for `stochastic_bits = r`. Given the same random integers (fp4swift's documented draw), the two
  agree on every element.

Skipped, with the reason, when gfloat is not installed; CI installs it through the `test` extras.
"""
from __future__ import annotations

import numpy as np
import pytest

import fp4swift as f4
from reference import MAGS, random_bits

gfloat = pytest.importorskip("gfloat", reason="gfloat is not installed (pip install gfloat: the `test` extras)")
from gfloat.types import Domain, FormatInfo, RoundMode  # noqa: E402

F32 = np.float32
FORMATS = ("e2m1", "e1m2", "e3m0", "e4m3", "e5m2")


def gfloat_format(fmt: str) -> FormatInfo:
    """fp4swift's format as a gfloat FormatInfo (from the library's own format_info)."""
    info = f4.format_info(fmt)
    if fmt == "e5m2":  # IEEE-like: inf and three NaN codes per sign
        return FormatInfo(fmt, 8, 3, bias=15, is_signed=True, domain=Domain.Extended, has_nz=True,
                          num_high_nans=3, has_subnormals=True, is_twos_complement=False)
    return FormatInfo(fmt, info.bits, info.man_bits + 1, bias=info.bias, is_signed=True, domain=Domain.Finite,
                      has_nz=True, num_high_nans=1 if fmt == "e4m3" else 0, has_subnormals=True,
                      is_twos_complement=False)


def values(fmt: str) -> np.ndarray:
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    h = h[np.isfinite(h)].astype(F32)
    mags = MAGS[fmt].astype(F32)
    mids = ((mags[1:] + mags[:-1]) / 2).astype(F32)
    near = np.concatenate([mids, np.nextafter(mids, F32(0)), np.nextafter(mids, F32(np.inf)), mags,
                           np.nextafter(mags, F32(np.inf)), np.nextafter(mags[1:], F32(0))])
    rng = np.random.default_rng(9)
    rand = (rng.uniform(1, 2, 200_000) * np.exp2(rng.integers(-30, 20, 200_000))).astype(F32)
    v = np.concatenate([h, near, -near, rand, -rand]).astype(F32)
    if fmt == "e4m3":
        v = v[np.abs(v) < 2 ** 15]  # gfloat's sat=True saturates, as fp4swift does; keep the test inside float16
    return v


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, F32).view(np.uint32)


def test_gfloat_format_infos_agree_with_the_tables():
    for fmt in FORMATS:
        fi = gfloat_format(fmt)
        assert float(fi.max) == f4.format_info(fmt).max_value, fmt
        assert sorted(set(np.abs(gfloat.decode_ndarray(fi, np.arange(1 << fi.k))[:MAGS[fmt].size]))) == \
            sorted(MAGS[fmt].tolist()), fmt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rounding,mode", [("nearest_even", RoundMode.TiesToEven), ("nearest_away", RoundMode.TiesToAway)])
def test_element_rounding_matches_gfloat(fmt, rounding, mode):
    v = values(fmt)
    fi = gfloat_format(fmt)
    saturate = fmt != "e5m2"
    want = gfloat.round_ndarray(fi, v.astype(np.float64), mode, sat=saturate).astype(F32)
    got = f4.decode(f4.encode(v, fmt, rounding=rounding), fmt)
    bad = np.flatnonzero(bits(got) != bits(want))
    assert bad.size == 0, (f"{fmt} {rounding}: {bad.size} of {v.size} differ from gfloat, e.g. "
                           f"{list(zip(v[bad[:5]].tolist(), got[bad[:5]].tolist(), want[bad[:5]].tolist()))}")


@pytest.mark.parametrize("fmt", ["e2m1", "e1m2", "e3m0", "e4m3"])
@pytest.mark.parametrize("r", [1, 3, 8, 13, 24])
@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5])
def test_r_bit_stochastic_rounding_matches_gfloat(fmt, r, seed):
    """fake_quantize with a unit scale (tensor e8m0 scale of an amax in [2^emax, 2^(emax+1))), so
    v = x exactly, against gfloat's StochasticFastest fed fp4swift's draws R_i (reference.random_bits)."""
    info = f4.format_info(fmt)
    rng = np.random.default_rng(r * 1000 + seed % 997)
    n = 1 << 15
    x = (rng.uniform(-1, 1, n) * info.max_value).astype(F32)
    x[:: 97] = (rng.integers(-8, 8, x[:: 97].size) * F32(0.125)).astype(F32)  # grid points and small values
    x[0] = F32(2.0 ** info.max_exponent)  # amax: the e8m0 scale is 2^(emax - emax) = 1
    got = f4.fake_quantize(x.reshape(1, -1), fmt=fmt, granularity="tensor", scale_rule="e8m0",
                           rounding="stochastic", seed=seed, stochastic_bits=r).reshape(-1)
    R = random_bits(seed, n, r)
    want = gfloat.round_ndarray(gfloat_format(fmt), x.astype(np.float64), RoundMode.StochasticFastest, sat=True,
                                srbits=R, srnumbits=r).astype(F32)
    bad = np.flatnonzero(bits(got) != bits(want))
    assert bad.size == 0, f"{fmt} r={r}: {bad.size} of {n} differ from gfloat StochasticFastest"
