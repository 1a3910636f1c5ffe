"""Argument checks and numpy ↔ ctypes plumbing shared by the public modules.

Everything a user passes is validated here before it reaches the Swift library.
"""
from __future__ import annotations

import ctypes
from typing import Any, Tuple

import numpy as np

from . import _native


def _is_ml_dtypes_float(dtype: np.dtype) -> bool:
    # bfloat16, float8_*, float4_* from ml_dtypes register as kind 'V' numpy scalar types.
    mod = getattr(dtype.type, "__module__", "") or ""
    return mod.startswith("ml_dtypes") and "float" in dtype.name


_F32 = np.dtype(np.float32)


def as_float32(x: Any, name: str = "x") -> np.ndarray:
    """x as a C-contiguous float32 array, copied at most once.

    Accepts float16/32/64 and ml_dtypes floats (bfloat16, ...); other dtypes raise TypeError.
    """
    # Fast path (the per-call hot path of the linear layer): already what np.asarray would return.
    if type(x) is np.ndarray and x.dtype is _F32 and x.flags.c_contiguous:
        return x
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if hasattr(x, "__cuda_array_interface__") or getattr(getattr(x, "device", None), "type", "cpu") not in ("cpu",):
            raise TypeError(f"{name} lives on a GPU; fp4swift's kernels run on the CPU: move it with .cpu() first")
        try:
            arr = np.asarray(x)
        except Exception as e:  # e.g. ragged sequences
            raise TypeError(f"{name} must be a float array, got {type(x).__name__}: {e}") from e
    dt = arr.dtype
    if not (np.issubdtype(dt, np.floating) or _is_ml_dtypes_float(dt)):
        raise TypeError(f"{name} must hold floating-point values (float16/32/64 or bfloat16), got dtype {dt}")
    # np.asarray keeps 0-d shapes (np.ascontiguousarray would make them 1-d).
    return np.asarray(arr, dtype=np.float32, order="C")


def as_matrix_shape(shape: Tuple[int, ...]) -> Tuple[int, int]:
    """The [rows, cols] view of a shape: last axis = columns, a 0-d or 1-d array is one row."""
    n = len(shape)
    if n == 2:
        return int(shape[0]), int(shape[1])
    if n == 0:
        return 1, 1
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if n > 1 else 1
    return rows, cols


# Pointers to array data. `a.ctypes.data_as(P)` costs ~3 µs and leaves a reference cycle per
# call (ctypes.cast stores the source pointer in its own _objects, bpo-12836; numpy's comment in
# _ctypes.data_as), i.e. work for the cyclic GC. `T.from_buffer(a)` is a ctypes object over the
# array's memory (~0.4 µs, no cycle) that keeps a buffer export, hence the array, alive as long
# as it lives; a POINTER(T) argument accepts it (ctypes applies byref). It needs a writable,
# non-empty C-contiguous buffer: read-only or empty arrays take the data_as path.


def cptr(a: np.ndarray, ctype: Any, ptype: Any) -> Any:
    """A POINTER(ctype) instance pointing at a's data (keeps a alive), e.g. for a struct field."""
    try:
        return ptype(ctype.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data_as(ptype)


def fptr(a: np.ndarray) -> Any:
    return cptr(a, ctypes.c_float, _native.f32p)


def farg(a: np.ndarray) -> Any:
    """fptr for a function argument only (cheaper: no pointer object)."""
    try:
        return _C_FLOAT_FROM_BUFFER(a)
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data_as(_native.f32p)


_C_FLOAT_FROM_BUFFER = ctypes.c_float.from_buffer


def u8ptr(a: np.ndarray) -> Any:
    return cptr(a, ctypes.c_uint8, _native.u8p)


def f64ptr(a: np.ndarray) -> Any:
    return cptr(a, ctypes.c_double, _native.f64p)


def check_choice(value: Any, choices: list, what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def check_positive(name: str, value: Any) -> float:
    """value as a float, which must be a positive finite number (TypeError for non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (v > 0) or not np.isfinite(v):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return v
