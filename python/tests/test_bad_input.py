"""Bad and unusual input (numerics.md §3): dtypes, names, shapes, NaN/inf, empty and 0-d arrays,
non-contiguous views, float64/float16/bfloat16 input, and no mutation of the input."""
from __future__ import annotations

import re
import warnings

import ml_dtypes
import numpy as np
import pytest

import fp4swift as f4
from reference import assert_bits_equal, ref_encode, ref_quantize

RULE_FORMATS = [("e2m1", "absmax"), ("e2m1", "pow2"), ("e2m1", "e8m0"), ("e2m1", "nvfp4"),
                ("e2m1", "absmax_div3"), ("e4m3", "absmax"), ("e3m0", "e8m0"), ("e5m2", "pow2"), ("e1m2", "absmax")]


# ---------------------------------------------------------------------------
# Wrong dtypes -> TypeError
# ---------------------------------------------------------------------------

BAD_ARRAYS = {
    "int32": np.arange(6, dtype=np.int32).reshape(2, 3),
    "int64": np.arange(6).reshape(2, 3),
    "uint8": np.arange(6, dtype=np.uint8).reshape(2, 3),
    "bool": np.ones((2, 3), dtype=bool),
    "object": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=object),
    "str": np.array([["1.0", "2", "3"], ["4", "5", "6"]]),
    "complex": np.ones((2, 3), dtype=np.complex64),
}


@pytest.mark.parametrize("name", list(BAD_ARRAYS))
def test_wrong_dtype_raises_typeerror(name):
    x = BAD_ARRAYS[name]
    for call in (
        lambda: f4.fake_quantize(x),
        lambda: f4.quantize(x),
        lambda: f4.encode(x, "e2m1"),
        lambda: f4.fidelity(x, x),
        lambda: f4.fidelity(np.ones((2, 3), dtype=np.float32), x),
    ):
        with pytest.raises(TypeError, match=r"(?i)float"):
            call()


def test_decode_rejects_float_codes():
    with pytest.raises(TypeError):
        f4.decode(np.array([0.0, 1.0]), "e2m1")


def test_decode_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        f4.decode(np.array([16], dtype=np.uint8), "e2m1")
    with pytest.raises(ValueError):
        f4.decode(np.array([300]), "e4m3")


# ---------------------------------------------------------------------------
# Unknown names, invalid combinations, blocks that do not divide -> ValueError
# ---------------------------------------------------------------------------

X = np.ones((4, 32), dtype=np.float32)


@pytest.mark.parametrize("kw", [
    dict(fmt="e2m2"), dict(fmt="E2M1"), dict(fmt="fp4"),
    dict(granularity="rows"), dict(granularity="channel"), dict(granularity="block(x)"),
    dict(scale_rule="max"), dict(scale_rule="amax"),
    dict(rounding="nearest"), dict(rounding="rne"),
    dict(nonfinite="ignore"),
])
def test_unknown_names_raise_valueerror(kw):
    with pytest.raises(ValueError) as ei:
        f4.fake_quantize(X, **kw)
    value = next(iter(kw.values()))
    assert value in str(ei.value) or "expected" in str(ei.value)
    if "nonfinite" not in kw:
        with pytest.raises(ValueError):
            f4.quantize(X, **kw)


def test_unknown_names_in_codecs():
    with pytest.raises(ValueError, match="e2m2"):
        f4.encode(X, "e2m2")
    with pytest.raises(ValueError, match="e2m2"):
        f4.decode(np.zeros(3, dtype=np.uint8), "e2m2")
    with pytest.raises(ValueError, match="nearest"):
        f4.encode(X, "e2m1", rounding="nearest")
    with pytest.raises(ValueError):
        f4.format_info("e9m9")


def test_invalid_combinations():
    with pytest.raises(ValueError, match="nvfp4"):
        f4.fake_quantize(X, fmt="e4m3", scale_rule="nvfp4")
    with pytest.raises(ValueError, match="e8m0"):
        f4.fake_quantize(X, fmt="e8m0")
    with pytest.raises(ValueError):
        f4.quantize(X, nonfinite="propagate")
    for block in (0, -16):
        with pytest.raises(ValueError):
            f4.fake_quantize(X, granularity="block", block=block)
    with pytest.raises(ValueError):
        f4.fake_quantize(X, granularity="row", block=16)
    with pytest.raises(ValueError):
        f4.fake_quantize(X, granularity="block(16)", block=32)


@pytest.mark.parametrize("call", [f4.fake_quantize, f4.quantize])
def test_block_must_divide_last_dimension(call):
    x = np.ones((3, 40), dtype=np.float32)
    with pytest.raises(ValueError) as ei:
        call(x, granularity="block(16)")
    msg = str(ei.value)
    assert "multiple of 16" in msg and "40" in msg, msg
    with pytest.raises(ValueError, match="multiple of 32"):
        call(np.ones(48, dtype=np.float32), granularity="block", block=32)


@pytest.mark.parametrize("call", [f4.fake_quantize, f4.quantize])
def test_block2d_must_divide_both_dimensions(call):
    with pytest.raises(ValueError, match="16") as ei:
        call(np.ones((24, 32), dtype=np.float32), granularity="block2d(16)")
    assert "multiple" in str(ei.value)
    with pytest.raises(ValueError, match="multiple"):
        call(np.ones((32, 24), dtype=np.float32), granularity="block2d(16)")


def test_fidelity_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        f4.fidelity(np.ones((2, 3), dtype=np.float32), np.ones((3, 2), dtype=np.float32))


def test_bad_seed_and_threads():
    with pytest.raises(ValueError):
        f4.fake_quantize(X, rounding="stochastic", seed=-1)
    with pytest.raises(TypeError):
        f4.fake_quantize(X, rounding="stochastic", seed=1.5)
    with pytest.raises(ValueError):
        f4.set_num_threads(0)
    with pytest.raises(TypeError):
        f4.set_num_threads(2.0)


# ---------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,rule", RULE_FORMATS)
@pytest.mark.parametrize("gran", ["row", "block(16)", "column", "block2d(4)"])
def test_nonfinite_propagate(fmt, rule, gran, rng):
    """Every output of a group with NaN/inf is NaN, a RuntimeWarning gives the group count,
    other groups are unaffected (equal to quantizing with the bad groups zeroed)."""
    x = (rng.standard_normal((8, 32)) * 10.0 ** rng.uniform(-2, 2, (8, 1))).astype(np.float32)
    x[1, 3] = np.nan
    x[5, 20] = np.inf
    x[5, 21] = -np.inf  # same group as [5, 20] for row / block(16) / block2d(4)
    kw = dict(fmt=fmt, granularity=gran, scale_rule=rule)
    ref = ref_quantize(x, **kw)
    expected_groups = ref.nonfinite_groups
    assert expected_groups >= 2
    with pytest.warns(RuntimeWarning, match=rf"\b{expected_groups}\b") as rec:
        got = f4.fake_quantize(x, **kw)
    assert any("NaN" in str(w.message) or "nan" in str(w.message).lower() for w in rec)
    assert_bits_equal(got, ref.xhat, f"{fmt} {rule} {gran}")
    if gran == "row":
        assert np.all(np.isnan(got[[1, 5]])) and not np.any(np.isnan(np.delete(got, [1, 5], axis=0)))
    if gran == "block(16)":
        assert np.all(np.isnan(got[1, :16])) and np.all(np.isnan(got[5, 16:]))
        assert np.isnan(got).sum() == 32
    # Other groups: equal to the clean tensor with the bad groups set to zero.
    clean = x.copy()
    clean[np.isnan(ref.xhat)] = 0
    want_clean = f4.fake_quantize(clean, **kw)
    ok = ~np.isnan(ref.xhat)
    assert_bits_equal(got[ok], want_clean[ok], "groups without NaN/inf are unaffected")
    assert_bits_equal(want_clean, ref_quantize(clean, **kw).xhat, "clean reference")


def test_nonfinite_propagate_stochastic_and_tensor(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    x[2, 2] = np.nan
    with pytest.warns(RuntimeWarning, match=r"\b1\b"):
        got = f4.fake_quantize(x, granularity="tensor", rounding="stochastic", seed=3)
    assert np.all(np.isnan(got))


def test_no_warning_for_finite_input(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f4.fake_quantize(x)


@pytest.mark.parametrize("gran", ["row", "tensor", "column", "block(4)"])
def test_nonfinite_raise_names_flat_index(gran, rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    x[1, 5] = np.inf   # flat index 13
    x[2, 0] = np.nan   # flat index 16
    with pytest.raises(f4.NonFiniteError) as ei:
        f4.fake_quantize(x, granularity=gran, nonfinite="raise")
    assert isinstance(ei.value, ValueError)
    assert re.search(r"\b13\b", str(ei.value)), str(ei.value)


@pytest.mark.parametrize("fmt,rule", RULE_FORMATS)
def test_quantize_nonfinite_raises_with_index(fmt, rule, rng):
    x = rng.standard_normal((4, 16)).astype(np.float32)
    x[2, 7] = np.nan  # flat index 39
    x[3, 1] = np.inf
    with pytest.raises(f4.NonFiniteError) as ei:
        f4.quantize(x, fmt=fmt, scale_rule=rule, granularity="block(16)")
    assert re.search(r"\b39\b", str(ei.value)), str(ei.value)
    x3 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    x3[1, 2, 3] = -np.inf  # flat index 23
    with pytest.raises(f4.NonFiniteError, match=r"\b23\b"):
        f4.quantize(x3, fmt=fmt, scale_rule=rule)


# ---------------------------------------------------------------------------
# Empty and 0-d arrays
# ---------------------------------------------------------------------------


EMPTY_CASES = [(s, g) for s in [(0,), (0, 5), (5, 0), (2, 0, 3), (0, 16)]
               for g in ["tensor", "row", "column", "block(16)"] if g != "block(16)" or s[-1] % 16 == 0]


@pytest.mark.parametrize("shape,gran", EMPTY_CASES)
def test_empty_arrays(shape, gran):
    x = np.zeros(shape, dtype=np.float32)
    for fmt, rule in RULE_FORMATS:
        out = f4.fake_quantize(x, fmt=fmt, granularity=gran, scale_rule=rule)
        assert out.shape == shape and out.dtype == np.float32
        qt = f4.quantize(x, fmt=fmt, granularity=gran, scale_rule=rule)
        assert qt.shape == shape
        assert qt.codes.size == 0
        assert qt.dequantize().shape == shape
    assert f4.encode(x, "e2m1").shape == shape
    assert f4.decode(np.zeros(shape, dtype=np.uint8), "e2m1").shape == shape
    assert f4.pack_fp4(np.zeros(0, dtype=np.uint8)).size == 0
    assert f4.unpack_fp4(np.zeros(0, dtype=np.uint8), 0).size == 0
    fid = f4.fidelity(x, x)
    assert fid["mse"] == 0


@pytest.mark.parametrize("fmt,rule", RULE_FORMATS)
def test_zero_d_values(fmt, rule):
    """A 0-d array is a valid tensor (one row, one column): values match the reference."""
    for value in (3.3, -0.7, 0.0, -0.0, 1e-3):
        x = np.array(value, dtype=np.float32)
        for rounding in ("nearest_even", "stochastic"):
            kw = dict(fmt=fmt, scale_rule=rule, rounding=rounding, seed=4)
            want = ref_quantize(x, **kw).xhat
            assert want.shape == ()
            got = f4.fake_quantize(x, **kw)
            assert got.size == 1
            assert_bits_equal(got.reshape(()), want, f"{value} {kw}")
            assert_bits_equal(f4.quantize(x, **kw).dequantize().reshape(()), want, f"{value} {kw}")
        assert f4.encode(x, fmt).reshape(()) == ref_encode(x, fmt)


def test_zero_d_shape_kept():
    """Outputs have the input's shape (fake_quantize docstring: 'Returns float32 with x's
    shape'; encode: 'same shape'), so a 0-d input gives a 0-d output."""
    x = np.array(1.5, dtype=np.float32)
    shapes = {
        "fake_quantize": f4.fake_quantize(x).shape,
        "fake_quantize(np.float32 scalar)": f4.fake_quantize(np.float32(1.5)).shape,
        "quantize().shape": f4.quantize(x).shape,
        "quantize().dequantize()": f4.quantize(x).dequantize().shape,
        "encode": f4.encode(x, "e2m1").shape,
        "decode": f4.decode(np.array(3, dtype=np.uint8), "e2m1").shape,
    }
    wrong = {k: v for k, v in shapes.items() if v != ()}
    assert not wrong, f"0-d input lost its shape: {wrong}"


# ---------------------------------------------------------------------------
# Layout of the input: non-contiguous, negative strides, Fortran order
# ---------------------------------------------------------------------------


def _views(base):
    yield "strided columns", base[:, ::2]
    yield "strided rows", base[::3]
    yield "negative strides", base[::-1, ::-1]
    yield "fortran order", np.asfortranarray(base)
    yield "transpose", base.T
    yield "3-D transpose", base.reshape(8, 12, 16).transpose(1, 0, 2)
    yield "column slice", base[:, 3]


@pytest.mark.parametrize("kw", [
    dict(),
    dict(granularity="block(16)", scale_rule="e8m0"),
    dict(granularity="tensor", scale_rule="nvfp4", rounding="stochastic", seed=11),
    dict(granularity="column", fmt="e4m3", rounding="stochastic", seed=12),
    dict(granularity="block2d(4)", fmt="e3m0", scale_rule="pow2"),
])
def test_noncontiguous_equals_contiguous_copy(kw, rng):
    base = rng.standard_normal((96, 16)).astype(np.float32)
    for name, v in _views(base):
        if "block" in kw.get("granularity", "") and v.shape[-1] % 16:
            continue
        if "block2d" in kw.get("granularity", "") and (int(np.prod(v.shape[:-1])) % 4):
            continue
        c = np.ascontiguousarray(v)
        assert_bits_equal(f4.fake_quantize(v, **kw), f4.fake_quantize(c, **kw), name)
        assert_bits_equal(f4.fake_quantize(v, **kw), ref_quantize(c, **kw).xhat, name + " vs reference")
        qa, qb = f4.quantize(v, **kw), f4.quantize(c, **kw)
        np.testing.assert_array_equal(qa.codes, qb.codes, err_msg=name)
        np.testing.assert_array_equal(qa.scales, qb.scales, err_msg=name)
        np.testing.assert_array_equal(f4.encode(v, "e2m1"), f4.encode(c, "e2m1"), err_msg=name)
        assert f4.fidelity(v, v * 0.5) == f4.fidelity(c, c * 0.5)


# ---------------------------------------------------------------------------
# Other float dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float16, ml_dtypes.bfloat16, np.longdouble])
def test_other_float_dtypes_accepted(dtype, rng):
    x = (rng.standard_normal((6, 32)) * 4).astype(dtype)
    x32 = x.astype(np.float32)
    for kw in (dict(), dict(granularity="block(16)", scale_rule="nvfp4"), dict(fmt="e4m3", rounding="stochastic")):
        got = f4.fake_quantize(x, **kw)
        assert got.dtype == np.float32
        assert_bits_equal(got, f4.fake_quantize(x32, **kw), f"{np.dtype(dtype).name} {kw}")
        assert_bits_equal(got, ref_quantize(x32, **kw).xhat)
        assert_bits_equal(f4.quantize(x, **kw).dequantize(), got)
    np.testing.assert_array_equal(f4.encode(x, "e2m1"), f4.encode(x32, "e2m1"))


def test_float64_converted_once_to_float32():
    """float64 input is rounded to float32 first (then quantized), not quantized in float64:
    0.25 + 2^-40 rounds to 0.25 in float32, which is a tie that goes to 0."""
    x = np.array([0.25 + 2.0 ** -40], dtype=np.float64)
    assert f4.encode(x, "e2m1")[0] == 0


def test_python_lists_accepted():
    got = f4.fake_quantize([[1.0, -2.0, 3.0], [0.5, 0.25, -6.0]])
    assert_bits_equal(got, ref_quantize(np.array([[1.0, -2.0, 3.0], [0.5, 0.25, -6.0]], dtype=np.float32)).xhat)


# ---------------------------------------------------------------------------
# The input is never modified
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_not_modified(dtype, rng):
    x = (rng.standard_normal((16, 32)) * 3).astype(dtype)
    x[0, 0] = -0.0
    x[3, :] = 0
    x_nan = x.copy()
    x_nan[5, 5] = np.nan
    before, before_nan = x.copy(), x_nan.copy()
    f4.fake_quantize(x)
    f4.fake_quantize(x, granularity="block(16)", scale_rule="nvfp4", rounding="stochastic")
    f4.fake_quantize(x, granularity="column", scale_rule="e8m0", fmt="e3m0")
    f4.quantize(x, granularity="block2d(16)", scale_rule="pow2").dequantize()
    f4.encode(x, "e4m3")
    f4.fidelity(x, x * 2)
    with pytest.warns(RuntimeWarning):
        f4.fake_quantize(x_nan)
    with pytest.raises(f4.NonFiniteError):
        f4.quantize(x_nan)
    with pytest.raises(f4.NonFiniteError):
        f4.encode(x_nan, "e2m1")
    np.testing.assert_array_equal(x.view(np.uint8), before.view(np.uint8))
    np.testing.assert_array_equal(x_nan.view(np.uint8), before_nan.view(np.uint8))
    codes = np.arange(16, dtype=np.uint8)
    cb = codes.copy()
    f4.pack_fp4(codes)
    f4.decode(codes, "e2m1")
    np.testing.assert_array_equal(codes, cb)
