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


def as_float32(x: Any, name: str = "x") -> np.ndarray:
    """x as a C-contiguous float32 array, copied at most once.

    Accepts float16/32/64 and ml_dtypes floats (bfloat16, ...); other dtypes raise TypeError.
    """
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
    if len(shape) == 0:
        return 1, 1
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, cols


def fptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.f32p)


def u8ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.u8p)


def f64ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.f64p)


def i64ref(v: ctypes.c_int64) -> Any:
    return ctypes.byref(v)


def check_choice(value: Any, choices: list, what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value
