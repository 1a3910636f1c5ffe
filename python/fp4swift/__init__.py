"""fp4swift: FP4 training numerics in Swift, called from Python.

The numpy API (what every kernel computes: docs/numerics.md):

    import fp4swift as f4
    f4.encode(values, "e2m1"); f4.decode(codes, "e2m1")
    f4.fake_quantize(x, fmt="e2m1", granularity="row", scale_rule="absmax")
    qt = f4.quantize(x); qt.codes, qt.scales, qt.dequantize()
    f4.fidelity(x, x_hat)
    y, saved = f4.linear_forward(x, w, b, "wang2025"); dx, dw, db = f4.linear_backward(dy, saved)
"""
from .dge import dge_derivative, dge_surrogate
from .linear import LinearSaved, PreparedInput, linear_backward, linear_forward, prepare_input
from .outliers import CSR, csr_matmul_t, occ, occ_thresholds
from .recipe import Recipe, recipes, register_recipe
from ._native import FP4Error, FP4InternalError, FP4StateError, FP4ValueError, NonFiniteError
from .quantization import (
    DEFAULT_BLOCK,
    FORMATS,
    GRANULARITIES,
    ROUNDINGS,
    SCALE_RULES,
    FormatInfo,
    QuantizedTensor,
    QuantizerSpec,
    decode,
    encode,
    fake_quantize,
    fidelity,
    format_info,
    formats,
    get_num_threads,
    pack_fp4,
    quantize,
    set_num_threads,
    unpack_fp4,
)

from .gemm import gemm, gemm_path, gemm_paths
from .quartet import clip_mask, hadamard
from .roles import ROLES, module_role

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BLOCK", "FORMATS", "GRANULARITIES", "ROUNDINGS", "SCALE_RULES",
    "FP4Error", "FP4InternalError", "FP4StateError", "FP4ValueError", "NonFiniteError",
    "FormatInfo", "QuantizedTensor", "QuantizerSpec",
    "decode", "encode", "fake_quantize", "fidelity", "format_info", "formats",
    "get_num_threads", "pack_fp4", "quantize", "set_num_threads", "unpack_fp4",
    "CSR", "LinearSaved", "Recipe", "csr_matmul_t", "dge_derivative", "dge_surrogate",
    "linear_backward", "linear_forward", "occ", "occ_thresholds", "PreparedInput", "prepare_input", "recipes", "register_recipe",
    "clip_mask", "hadamard", "ROLES", "module_role", "gemm", "gemm_path", "gemm_paths",
]
