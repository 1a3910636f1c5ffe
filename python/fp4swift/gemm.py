"""GEMM on packed FP4 codes: real FP4 arithmetic on the CPU (docs/numerics.md §11).

    qa = f4.quantize(a, "e2m1", granularity="block", scale_rule="e8m0", block=32)
    qb = f4.quantize(b, "e2m1", granularity="block", scale_rule="e8m0", block=32)
    c = f4.gemm(qa, qb)            # ≈ qa.dequantize() @ qb.dequantize().T

Inside a scale group the dot product is an exact integer sum (int8 codes, int32
accumulators); groups are added in float32 in ascending order along K. The kernel is
chosen at run time by CPU feature (AVX-512 VNNI, AVX2, or portable), every path gives the
same bits, and `FP4SWIFT_GEMM_ISA=generic|avx2|avx512vnni` forces one.
"""
from __future__ import annotations

import ctypes
from typing import List, Optional

import numpy as np

from . import _native
from ._arrays import as_matrix_shape, cptr
from .quantization import BYTE_SCALE_RULES, QuantizedTensor

PATHS = ("generic", "avx2", "avx512vnni")
_PATH_INDEX = {"generic": _native.GEMM_PATH_GENERIC, "avx2": _native.GEMM_PATH_AVX2,
               "avx512vnni": _native.GEMM_PATH_AVX512VNNI}
_FP4 = ("e2m1", "e1m2", "e3m0")


def _operand(t: QuantizedTensor, name: str) -> _native.GemmOperand:
    if not isinstance(t, QuantizedTensor):
        raise TypeError(f"{name} must be a QuantizedTensor from fp4swift.quantize, got {type(t).__name__}")
    if t.fmt not in _FP4:
        raise ValueError(f"{name} is {t.fmt}; the packed GEMM multiplies FP4 codes ({', '.join(_FP4)})")
    if t.spec.granularity == "column":
        raise ValueError(f"{name} has column scales, which vary along K; quantize it with tensor, row, block or block2d scales")
    rows, cols = as_matrix_shape(t.shape)
    codes = np.ascontiguousarray(t.codes, dtype=np.uint8)
    op = _native.GemmOperand()
    op.codes = cptr(codes, ctypes.c_uint8, _native.u8p)
    op.codes_len = codes.size
    op.rows, op.cols = rows, cols
    op.quantizer = t.spec.to_c()
    stored = np.ascontiguousarray(t.scales)
    if t.spec.scale_rule in BYTE_SCALE_RULES:
        # The stored bytes themselves (e8m0 exponents, nvfp4 e4m3 codes), as saved state keeps them
        # (nvfp4_torchao: the library multiplies them by the tensor scale P).
        stored = stored.astype(np.uint8, copy=False)
        op.scale_bytes = cptr(stored, ctypes.c_uint8, _native.u8p)
    else:
        stored = stored.astype(np.float32, copy=False)
        op.scales = cptr(stored, ctypes.c_float, _native.f32p)
    op.n_scales = stored.size
    op.tensor_scale = float(t.tensor_scale)
    op._keep = (codes, stored)  # the buffers must outlive the call
    return op


def gemm(a: QuantizedTensor, b: QuantizedTensor, path: Optional[str] = None) -> np.ndarray:
    """A·Bᵀ computed on the packed codes of two quantized matrices (float32 [M, N]).

    a: [M, K] and b: [N, K] (a 1-d tensor is one row) from `fp4swift.quantize` in an FP4
    format, with tensor, row, block(n) or block2d(n) scales (any scale rule). Where both
    are blocked, one block size must divide the other. The result is the product of the
    dequantized operands up to float32 rounding across scale groups: |C − C₆₄| ≤
    (G + 5)·2⁻²⁴·Σₖ|âₖ·b̂ₖ| with G scale groups along K (numerics.md §11).
    path: None (FP4SWIFT_GEMM_ISA, else the fastest this CPU runs) or one of `gemm_paths()`.
    """
    A, B = _operand(a, "a"), _operand(b, "b")
    if A.cols != B.cols:
        raise ValueError(f"a is [{A.rows}, {A.cols}] and b is [{B.rows}, {B.cols}]: gemm(a, b) = a·bᵀ needs the same K")
    if path is None:
        index = _native.GEMM_PATH_DEFAULT
    elif path in _PATH_INDEX:
        index = _PATH_INDEX[path]
    else:
        raise ValueError(f"unknown GEMM path {path!r}; expected one of {', '.join(PATHS)}")
    out = np.empty((A.rows, B.rows), dtype=np.float32)
    _native.check(_native.lib.fp4swift_gemm(ctypes.byref(A), ctypes.byref(B), index,
                                            cptr(out, ctypes.c_float, _native.f32p), out.size))
    return out


def gemm_path() -> str:
    """The path `gemm(..., path=None)` takes now: FP4SWIFT_GEMM_ISA if set, else the fastest supported."""
    p = ctypes.c_int32()
    _native.check(_native.lib.fp4swift_gemm_default_path(ctypes.byref(p)))
    return PATHS[p.value]


def gemm_paths() -> List[str]:
    """The GEMM paths this CPU runs, slowest first."""
    out = []
    for name in PATHS:
        ok = ctypes.c_int32()
        _native.check(_native.lib.fp4swift_gemm_path_supported(_PATH_INDEX[name], ctypes.byref(ok)))
        if ok.value:
            out.append(name)
    return out
