"""OCC, outlier clamping and compensation (numerics.md §5), over numpy arrays: the clamp
thresholds, the clamp with its sparse CSR residual, and the residual's GEMM."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np

from . import _native
from ._arrays import as_float32, as_matrix_shape, check_choice, fptr

#: Groups of the clamp thresholds: one pair for the whole tensor, or one per row.
OCC_GROUPS = ["tensor", "row"]


def _i64p(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.i64p)


def _i32p(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.i32p)


def check_alpha(alpha: Any) -> float:
    """The OCC quantile α as a float in (0.5, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    a = float(alpha)
    if not 0.5 < a <= 1.0:
        raise ValueError(f"alpha must lie in (0.5, 1], got {alpha}")
    return a


@dataclass
class CSR:
    """A sparse [rows, cols] matrix in CSR form: row pointers, column indices, float32 values."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    shape: Tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1]) if self.indptr.size else 0

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.nnz * (self.indices.itemsize + self.values.itemsize))

    def toarray(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices[: self.nnz]] = self.values[: self.nnz]
        return out

    def __iter__(self):  # (indptr, indices, values, shape), as ARCHITECTURE.md's tuple
        n = self.nnz
        return iter((self.indptr, self.indices[:n], self.values[:n], self.shape))


def occ_thresholds(x: Any, alpha: float = 0.99, per: str = "tensor") -> Tuple[np.ndarray, np.ndarray]:
    """(lo, hi) clamp thresholds: sorted[floor((1−α)n)] and sorted[min(floor(αn), n−1)] per group."""
    a = as_float32(x)
    rows, cols = as_matrix_shape(a.shape)
    alpha = check_alpha(alpha)
    per_row = check_choice(per, OCC_GROUPS, "OCC group") == "row"
    groups = (rows if per_row else 1) if a.size else 0  # an empty tensor has no groups
    lo = np.empty(groups, dtype=np.float32)
    hi = np.empty(groups, dtype=np.float32)
    _native.check(_native.lib.fp4swift_occ_thresholds(fptr(a), rows, cols, alpha, int(per_row), fptr(lo), fptr(hi), groups))
    return lo, hi


def occ(x: Any, alpha: float = 0.99, per: str = "tensor") -> Tuple[np.ndarray, CSR]:
    """Outlier clamping (numerics.md §5): (X_c, ΔX) with X_c = min(max(X, lo), hi) and the residual
    ΔX = X − X_c as CSR over the [rows, cols] view of x. X_c keeps x's shape."""
    a = as_float32(x)
    rows, cols = as_matrix_shape(a.shape)
    alpha = check_alpha(alpha)
    per_row = check_choice(per, OCC_GROUPS, "OCC group") == "row"
    cap = ctypes.c_int64()
    _native.check(_native.lib.fp4swift_occ_residual_capacity(rows, cols, alpha, int(per_row), ctypes.byref(cap)))
    xc = np.empty(a.shape, dtype=np.float32)
    indptr = np.zeros(rows + 1, dtype=np.int64)
    indices = np.empty(max(cap.value, 1), dtype=np.int32)
    values = np.empty(max(cap.value, 1), dtype=np.float32)
    nnz = ctypes.c_int64()
    _native.check(_native.lib.fp4swift_occ_clamp(fptr(a), rows, cols, alpha, int(per_row), fptr(xc), _i64p(indptr),
                                                 _i32p(indices), fptr(values), cap.value, ctypes.byref(nnz)))
    n = nnz.value
    return xc, CSR(indptr, indices[:n].copy(), values[:n].copy(), (rows, cols))


def csr_matmul_t(residual: CSR, w: Any) -> np.ndarray:
    """R · wᵀ for a CSR residual R [rows, cols] and a dense w [n, cols] (the OCC compensation term)."""
    wa = as_float32(w, "w")
    if wa.ndim != 2 or wa.shape[1] != residual.shape[1]:
        raise ValueError(f"w must be [n, {residual.shape[1]}], got {wa.shape}")
    rows, cols = residual.shape
    indptr = np.ascontiguousarray(residual.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(residual.indices, dtype=np.int32)
    values = np.ascontiguousarray(residual.values, dtype=np.float32)
    if indptr.shape != (rows + 1,):
        raise ValueError(f"indptr must hold rows + 1 = {rows + 1} entries, got {indptr.shape}")
    nnz = int(indptr[-1]) if rows >= 0 else 0
    if indices.size < nnz or values.size < nnz:
        raise ValueError(f"indices/values hold fewer than nnz = {nnz} entries")
    y = np.zeros((rows, wa.shape[0]), dtype=np.float32)
    _native.check(_native.lib.fp4swift_csr_matmul_t(_i64p(indptr), _i32p(indices), fptr(values), nnz, rows, cols,
                                                    fptr(wa), wa.shape[0], fptr(y)))
    return y
