"""f4.hadamard (numerics.md §6) against scipy.linalg.hadamard(n) / sqrt(n) in float64.

Definition under test: every 1×b segment x of each row becomes x · diag(d) · H_b with
H_b = hadamard(b) / √b (Sylvester order), d the optional ±1 sign vector.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard as scipy_hadamard

import fp4swift as f4

F32 = np.float32


def ref_hadamard(x, block, signs=None):
    """float64 reference: x · diag(d) · H_b per 1×b segment along the last axis."""
    x64 = np.asarray(x, dtype=F32).astype(np.float64)
    shape = x64.shape
    H = scipy_hadamard(block).astype(np.float64) / np.sqrt(block)
    d = np.ones(block) if signs is None else np.asarray(signs, dtype=np.float64)
    seg = x64.reshape(-1, block)
    return ((seg * d) @ H).reshape(shape)


def rel(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    den = np.max(np.abs(ref)) if ref.size else 1.0
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - ref)) / (den or 1.0)) if ref.size else 0.0


@pytest.mark.parametrize("block", [1, 2, 8, 16, 32, 64, 128, 256])
def test_matches_scipy_on_the_identity(block):
    """Rotating the identity rows gives H_b itself (up to float32 rounding of 1/√b)."""
    eye = np.eye(block, dtype=F32)
    got = f4.hadamard(eye, block=block)
    H = scipy_hadamard(block) / np.sqrt(block)
    assert rel(got, H) < 1e-6
    # H·Hᵀ = I, computed from the returned matrix
    G = got.astype(np.float64)
    np.testing.assert_allclose(G @ G.T, np.eye(block), atol=1e-6)


@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("shape", [(7, 256), (3, 5, 128), (256,), (1, 128)])
def test_random_matrices_match_reference(block, shape):
    rng = np.random.default_rng(block + len(shape))
    x = rng.standard_normal(shape).astype(F32) * F32(10.0) ** rng.integers(-3, 3)
    got = f4.hadamard(x, block=block)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert rel(got, ref_hadamard(x, block)) < 2e-6


@pytest.mark.parametrize("block", [32, 64, 128])
def test_signs_are_applied_before_the_transform(block):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 2 * block)).astype(F32)
    d = rng.choice([-1.0, 1.0], size=block).astype(F32)
    got = f4.hadamard(x, block=block, signs=d)
    assert rel(got, ref_hadamard(x, block, d)) < 2e-6
    # x · diag(d) · H differs from x · H · diag(d) for random d (the order matters)
    other = ref_hadamard(x, block) * np.tile(d, 2)
    assert rel(got, other) > 1e-2
    # inverse: y · Hᵀ · diag(d) recovers x
    back = f4.hadamard(got, block=block) * np.tile(d, 2)
    assert rel(back, x) < 2e-6


def test_known_vector():
    """e_0 maps to the constant row 1/√32; the constant vector maps to √32·e_0."""
    e0 = np.zeros(32, F32)
    e0[0] = 1
    np.testing.assert_allclose(f4.hadamard(e0), np.full(32, 1 / np.sqrt(32)), rtol=1e-7)
    ones = np.ones(32, F32)
    want = np.zeros(32)
    want[0] = np.sqrt(32)
    np.testing.assert_allclose(f4.hadamard(ones), want, rtol=1e-6, atol=1e-6)
    # x = (1, 2, ..., 32): y_j = Σ_i x_i H[i, j] / √32
    x = np.arange(1, 33, dtype=F32)
    np.testing.assert_allclose(f4.hadamard(x), x @ scipy_hadamard(32) / np.sqrt(32), rtol=1e-6, atol=1e-5)


def test_involution_and_norm_preserved():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 512)).astype(F32)
    y = f4.hadamard(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    assert rel(f4.hadamard(y), x) < 2e-6


def test_in_place_and_out():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 64)).astype(F32)
    want = f4.hadamard(x)
    buf = x.copy()
    r = f4.hadamard(buf, out=buf)
    assert r is buf
    np.testing.assert_array_equal(buf, want)
    out = np.empty_like(x)
    assert f4.hadamard(x, out=out) is out
    np.testing.assert_array_equal(out, want)


def test_thread_count_does_not_change_bits():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 256)).astype(F32)
    n = f4.get_num_threads()
    try:
        f4.set_num_threads(1)
        a = f4.hadamard(x)
        f4.set_num_threads(4)
        b = f4.hadamard(x)
    finally:
        f4.set_num_threads(n)
    np.testing.assert_array_equal(a, b)


def test_empty_and_noncontiguous_and_float64():
    assert f4.hadamard(np.zeros((0, 64), F32)).shape == (0, 64)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 8))
    got = f4.hadamard(x.T)  # non-contiguous float64 view of shape (8, 64)
    assert got.dtype == np.float32
    assert rel(got, ref_hadamard(x.T.astype(F32), 32)) < 2e-6


def test_nonfinite_propagates_within_its_segment():
    x = np.ones((2, 64), F32)
    x[0, 3] = np.nan
    y = f4.hadamard(x)
    assert np.all(np.isnan(y[0, :32])) and np.all(np.isfinite(y[0, 32:])) and np.all(np.isfinite(y[1]))


@pytest.mark.parametrize("kw,err,match", [
    (dict(block=24), ValueError, "power of two"),
    (dict(block=0), ValueError, "power of two"),
    (dict(block=128), ValueError, "divide"),
    (dict(block=32.0), TypeError, "int"),
    (dict(signs=np.ones(16)), ValueError, "shape"),
    (dict(signs=np.full(32, 0.5)), ValueError, r"\+1 and -1"),
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        f4.hadamard(np.ones((2, 96), F32), **kw)
    with pytest.raises(TypeError):
        f4.hadamard(np.ones((2, 32), np.int32))
