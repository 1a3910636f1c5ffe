"""ABI misuse: released or tampered saved state, and libraries of another ABI version."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fp4swift as f4
from fp4swift import _native


@pytest.fixture
def layer(rng):
    x = rng.standard_normal((8, 32)).astype(np.float32)
    x[2, 3] = 25.0
    w = rng.standard_normal((4, 32)).astype(np.float32)
    dy = rng.standard_normal((8, 4)).astype(np.float32)
    return x, w, dy


@pytest.mark.parametrize("recipe", ["wang2025", "fp4-direct", "fp32"])
def test_released_saved_raises_state_error(layer, recipe):
    x, w, dy = layer
    _, saved = f4.linear_forward(x, w, None, recipe)
    dx, dw, _ = f4.linear_backward(dy, saved)
    assert saved.consumed and saved.nbytes == 0 and saved.residual is None
    with pytest.raises(f4.FP4StateError, match="already used"):
        f4.linear_backward(dy, saved)
    with pytest.raises(f4.FP4StateError):  # still refused, whatever the arguments
        f4.linear_backward(dy, saved, retain=True, compute_dx=False)


def test_retain_allows_repeat_then_release(layer):
    x, w, dy = layer
    _, saved = f4.linear_forward(x, w, None, "wang2025")
    first = f4.linear_backward(dy, saved, retain=True)
    second = f4.linear_backward(dy, saved)  # releases
    for a, b in zip(first, second):
        assert (a is None and b is None) or np.array_equal(a, b)
    with pytest.raises(f4.FP4StateError):
        f4.linear_backward(dy, saved)


def test_explicit_release_then_backward_raises(layer):
    x, w, dy = layer
    _, saved = f4.linear_forward(x, w, None, "wang2025")
    saved.release()
    with pytest.raises(f4.FP4StateError):
        f4.linear_backward(dy, saved)


def test_saved_of_other_shape_is_refused_by_the_library(layer):
    """A saved struct that does not match the shapes (e.g. from another layer) never
    reaches the kernels: the library checks its buffer lengths (FP4StateError)."""
    x, w, dy = layer
    _, saved = f4.linear_forward(x[:2], w, None, "wang2025")
    saved.tokens = 8  # pretend it belongs to the 8-token call
    saved.x_shape = (8, 32)
    with pytest.raises(f4.FP4StateError, match="does not match"):
        f4.linear_backward(dy, saved)


def test_tampered_residual_is_refused_by_the_library(layer):
    x, w, dy = layer
    _, saved = f4.linear_forward(x, w, None, "wang2025")
    assert saved.residual_nnz > 0
    saved.residual_indices[0] = 1 << 20  # a column index far out of range
    with pytest.raises(f4.FP4ValueError, match="column index"):
        f4.linear_backward(dy, saved, retain=True)
    saved.struct.residual_nnz = saved.struct.residual_capacity + 5  # more entries than buffers
    with pytest.raises(f4.FP4StateError, match="inconsistent"):
        f4.linear_backward(dy, saved)


def test_null_pointers_are_errors_not_crashes():
    lib = _native.lib
    assert lib.fp4swift_fake_quantize(None, 2, 2, None, None, None) == _native.INVALID_ARGUMENT
    assert "NULL" in _native.last_error()
    q = _native.Quantizer()
    assert lib.fp4swift_fake_quantize(None, 2, 2, ctypes.byref(q), None, None) == _native.INVALID_ARGUMENT
    assert lib.fp4swift_linear_backward(None, 1, 1, None, None, 1, None, None, None, None, None) == _native.INVALID_ARGUMENT
    assert lib.fp4swift_encode(None, -1, 0, 0, 0, None) == _native.INVALID_ARGUMENT
    assert lib.fp4swift_name(99, 0) is None and lib.fp4swift_name(0, -1) is None


# ---------------------------------------------------------------------------------------
# Loading a library of another ABI version


FAKE_LIB = """
#include <stdint.h>
int32_t fp4swift_abi_version(void) { return VERSION; }
"""


def _fake_library(tmp_path, version=None) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fake library")
    src = tmp_path / "fake.c"
    src.write_text(FAKE_LIB if version is not None else "int not_fp4swift(void) { return 0; }\n")
    out = tmp_path / "libfake.so"
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(src)]
    if version is not None:
        cmd.insert(1, f"-DVERSION={version}")
    subprocess.run(cmd, check=True)
    return str(out)


def _import_with(library: str):
    code = textwrap.dedent("""
        try:
            import fp4swift
        except ImportError as e:
            print("IMPORTERROR:", e)
        else:
            print("IMPORTED")
    """)
    env = {**os.environ, "FP4SWIFT_LIBRARY": library}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_other_abi_version_is_refused(tmp_path):
    proc = _import_with(_fake_library(tmp_path, 999))
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTERROR:" in proc.stdout, proc.stdout
    assert "ABI version 999" in proc.stdout and f"expects {_native.ABI_VERSION}" in proc.stdout
    assert "pip install -e ." in proc.stdout


def test_right_version_but_missing_functions_is_refused(tmp_path):
    proc = _import_with(_fake_library(tmp_path, _native.ABI_VERSION))
    assert "IMPORTERROR:" in proc.stdout and "lacks fp4swift_" in proc.stdout, proc.stdout + proc.stderr


def test_not_an_fp4swift_library_is_refused(tmp_path):
    proc = _import_with(_fake_library(tmp_path, None))
    assert "IMPORTERROR:" in proc.stdout and "not an fp4swift library" in proc.stdout, proc.stdout + proc.stderr


def test_missing_library_is_refused(tmp_path):
    proc = _import_with(str(tmp_path / "nowhere.so"))
    assert "IMPORTERROR:" in proc.stdout and "missing" in proc.stdout, proc.stdout + proc.stderr


def test_unloadable_file_is_refused(tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    proc = _import_with(str(junk))
    assert "IMPORTERROR:" in proc.stdout and "cannot load" in proc.stdout, proc.stdout + proc.stderr
