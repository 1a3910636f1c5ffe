"""Low-level binding: loads libfp4swift.so and declares every C signature.

This file mirrors Sources/FP4CABI/include/fp4swift.h line for line (constants, structs,
functions, in the header's order); change both together. python/tests/test_abi_mirror.py
parses the header and checks every constant, struct layout and signature here against it.
The Pythonic layer lives in the other modules and validates arguments before anything
reaches this one.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import warnings
from ctypes import POINTER, c_char_p, c_double, c_float, c_int32, c_int64, c_uint8, c_uint64

ABI_VERSION = 6

# Status codes.
OK = 0
INVALID_ARGUMENT = 1
NONFINITE = 2
INVALID_STATE = 3
INTERNAL = 4

# Name tables for fp4swift_name(table, index).
TABLE_FORMAT = 0
TABLE_GRANULARITY = 1
TABLE_SCALE_RULE = 2
TABLE_ROUNDING = 3
TABLE_GEMM_PATH = 4

# Granularity indices.
GRANULARITY_TENSOR = 0
GRANULARITY_ROW = 1
GRANULARITY_COLUMN = 2
GRANULARITY_BLOCK = 3
GRANULARITY_BLOCK2D = 4

# Non-finite policies.
NONFINITE_PROPAGATE = 0
NONFINITE_RAISE = 1


class Quantizer(ctypes.Structure):
    """struct fp4swift_quantizer"""

    _fields_ = [
        ("format", c_int32),
        ("granularity", c_int32),
        ("block", c_int32),
        ("scale_rule", c_int32),
        ("rounding", c_int32),
        ("nonfinite", c_int32),
        ("seed", c_uint64),
        ("stochastic_bits", c_int32),
    ]


class FormatInfo(ctypes.Structure):
    """struct fp4swift_format_info"""

    _fields_ = [
        ("bits", c_int32),
        ("exp_bits", c_int32),
        ("man_bits", c_int32),
        ("bias", c_int32),
        ("max_exponent", c_int32),
        ("scale_only", c_int32),
        ("max_value", c_float),
    ]


class LinearRecipe(ctypes.Structure):
    """struct fp4swift_linear_recipe"""

    _fields_ = [
        ("quantize_input", c_int32),
        ("input", Quantizer),
        ("quantize_weight", c_int32),
        ("weight", Quantizer),
        ("quantize_gradient", c_int32),
        ("gradient", Quantizer),
        ("occ", c_int32),
        ("occ_per_row", c_int32),
        ("occ_compensate", c_int32),
        ("occ_alpha", c_double),
        ("dge", c_int32),
        ("dge_k", c_float),
        ("dge_clamp", c_float),
        ("wgrad_hadamard", c_int32),
        ("wgrad_hadamard_seed", c_uint64),
        ("backward_weight_mode", c_int32),
        ("backward_weight", Quantizer),
        ("backward_input_mode", c_int32),
        ("backward_input", Quantizer),
        ("gemm", c_int32),
        ("backward_grouping", c_int32),
    ]


# Backward operand modes (fp4swift_linear_recipe.backward_*_mode).
BACKWARD_FORWARD = 0
BACKWARD_FLOAT32 = 1
BACKWARD_QUANTIZE = 2

# How the backward quantizers group their operands (fp4swift_linear_recipe.backward_grouping).
BACKWARD_GROUPING_STORED = 0
BACKWARD_GROUPING_REDUCTION = 1

# Where a layer's GEMMs run (fp4swift_linear_recipe.gemm, the quartet calls' gemm argument).
GEMM_SIMULATED = 0
GEMM_PACKED = 1


class LinearSaved(ctypes.Structure):
    """struct fp4swift_linear_saved"""

    _fields_ = [
        ("x_codes", POINTER(c_uint8)),
        ("x_codes_len", c_int64),
        ("x_scales", POINTER(c_float)),
        ("x_scales_len", c_int64),
        ("x_tensor_scale", c_float),
        ("residual_indptr", POINTER(c_int64)),
        ("residual_indices", POINTER(c_int32)),
        ("residual_values", POINTER(c_float)),
        ("residual_capacity", c_int64),
        ("residual_nnz", c_int64),
        ("x_scale_bytes", POINTER(c_uint8)),
        ("x_scale_bytes_len", c_int64),
    ]


# GEMM paths (fp4swift_gemm's path argument).
GEMM_PATH_DEFAULT = -1
GEMM_PATH_GENERIC = 0
GEMM_PATH_AVX2 = 1
GEMM_PATH_AVX512VNNI = 2


class GemmOperand(ctypes.Structure):
    """struct fp4swift_gemm_operand"""

    _fields_ = [
        ("codes", POINTER(c_uint8)),
        ("codes_len", c_int64),
        ("rows", c_int64),
        ("cols", c_int64),
        ("quantizer", Quantizer),
        ("scales", POINTER(c_float)),
        ("scale_bytes", POINTER(c_uint8)),
        ("n_scales", c_int64),
        ("tensor_scale", c_float),
    ]


#: C struct name (typedef) -> its ctypes mirror.
STRUCTS = {
    "fp4swift_quantizer": Quantizer,
    "fp4swift_format_info": FormatInfo,
    "fp4swift_linear_recipe": LinearRecipe,
    "fp4swift_linear_saved": LinearSaved,
    "fp4swift_gemm_operand": GemmOperand,
}

f32p = POINTER(c_float)
u8p = POINTER(c_uint8)
i64p = POINTER(c_int64)
f64p = POINTER(c_double)
i32p = POINTER(c_int32)
QuantizerP = POINTER(Quantizer)
RecipeP = POINTER(LinearRecipe)
SavedP = POINTER(LinearSaved)

# name: (restype, argtypes), in header order, each below its C prototype.
SIGNATURES = {
    # int32_t fp4swift_abi_version(void);
    "fp4swift_abi_version": (c_int32, []),
    # const char *fp4swift_last_error(void);
    "fp4swift_last_error": (c_char_p, []),
    # int32_t fp4swift_set_num_threads(int32_t n);
    "fp4swift_set_num_threads": (c_int32, [c_int32]),
    # int32_t fp4swift_get_num_threads(void);
    "fp4swift_get_num_threads": (c_int32, []),
    # const char *fp4swift_name(int32_t table, int32_t index);
    "fp4swift_name": (c_char_p, [c_int32, c_int32]),
    # int32_t fp4swift_format_info_get(int32_t format, fp4swift_format_info *out);
    "fp4swift_format_info_get": (c_int32, [c_int32, POINTER(FormatInfo)]),
    # int32_t fp4swift_encode(const float *x, int64_t n, int32_t format, int32_t rounding, uint64_t seed,
    #     uint8_t *codes);
    "fp4swift_encode": (c_int32, [f32p, c_int64, c_int32, c_int32, c_uint64, u8p]),
    # int32_t fp4swift_decode(const uint8_t *codes, int64_t n, int32_t format, float *out);
    "fp4swift_decode": (c_int32, [u8p, c_int64, c_int32, f32p]),
    # int32_t fp4swift_pack_nibbles(const uint8_t *codes, int64_t n, uint8_t *packed, int64_t packed_len);
    "fp4swift_pack_nibbles": (c_int32, [u8p, c_int64, u8p, c_int64]),
    # int32_t fp4swift_unpack_nibbles(const uint8_t *packed, int64_t packed_len, int64_t n, uint8_t *codes);
    "fp4swift_unpack_nibbles": (c_int32, [u8p, c_int64, c_int64, u8p]),
    # int32_t fp4swift_group_layout(int64_t rows, int64_t cols, const fp4swift_quantizer *q, int64_t *tile_rows,
    #     int64_t *tile_cols);
    "fp4swift_group_layout": (c_int32, [c_int64, c_int64, QuantizerP, i64p, i64p]),
    # int32_t fp4swift_fake_quantize(const float *x, int64_t rows, int64_t cols, const fp4swift_quantizer *q,
    #     float *out, int64_t *nonfinite_groups);
    "fp4swift_fake_quantize": (c_int32, [f32p, c_int64, c_int64, QuantizerP, f32p, i64p]),
    # int32_t fp4swift_quantize(const float *x, int64_t rows, int64_t cols, const fp4swift_quantizer *q,
    #     uint8_t *codes, int64_t codes_len, float *scales, uint8_t *scale_bytes, int64_t n_scales,
    #     float *tensor_scale);
    "fp4swift_quantize": (c_int32, [f32p, c_int64, c_int64, QuantizerP, u8p, c_int64, f32p, u8p, c_int64, f32p]),
    # int32_t fp4swift_dequantize(const uint8_t *codes, int64_t codes_len, int64_t rows, int64_t cols,
    #     const fp4swift_quantizer *q, const float *scales, int64_t n_scales, float tensor_scale, float *out);
    "fp4swift_dequantize": (c_int32, [u8p, c_int64, c_int64, c_int64, QuantizerP, f32p, c_int64, c_float, f32p]),
    # int32_t fp4swift_hadamard(const float *x, int64_t rows, int64_t cols, int32_t block, const float *signs,
    #     float *out);
    "fp4swift_hadamard": (c_int32, [f32p, c_int64, c_int64, c_int32, f32p, f32p]),
    # int32_t fp4swift_clip_mask(const float *x, int64_t rows, int64_t cols, const fp4swift_quantizer *q,
    #     uint8_t *mask, int64_t mask_len);
    "fp4swift_clip_mask": (c_int32, [f32p, c_int64, c_int64, QuantizerP, u8p, c_int64]),
    # int32_t fp4swift_fidelity(const float *x, const float *x_hat, int64_t n, double *out);
    "fp4swift_fidelity": (c_int32, [f32p, f32p, c_int64, f64p]),
    # int32_t fp4swift_dge_derivative(const float *v, int64_t n, int32_t format, float k, float clamp,
    #     float *out);
    "fp4swift_dge_derivative": (c_int32, [f32p, c_int64, c_int32, c_float, c_float, f32p]),
    # int32_t fp4swift_dge_surrogate(const float *v, int64_t n, int32_t format, float k, float *out);
    "fp4swift_dge_surrogate": (c_int32, [f32p, c_int64, c_int32, c_float, f32p]),
    # int32_t fp4swift_occ_thresholds(const float *x, int64_t rows, int64_t cols, double alpha, int32_t per_row,
    #     float *lo, float *hi, int64_t n_groups);
    "fp4swift_occ_thresholds": (c_int32, [f32p, c_int64, c_int64, c_double, c_int32, f32p, f32p, c_int64]),
    # int32_t fp4swift_occ_residual_capacity(int64_t rows, int64_t cols, double alpha, int32_t per_row,
    #     int64_t *capacity);
    "fp4swift_occ_residual_capacity": (c_int32, [c_int64, c_int64, c_double, c_int32, i64p]),
    # int32_t fp4swift_occ_clamp(const float *x, int64_t rows, int64_t cols, double alpha, int32_t per_row,
    #     float *x_clamped, int64_t *indptr, int32_t *indices, float *values, int64_t capacity, int64_t *nnz);
    "fp4swift_occ_clamp": (c_int32, [f32p, c_int64, c_int64, c_double, c_int32, f32p, i64p, i32p, f32p, c_int64, i64p]),
    # int32_t fp4swift_csr_matmul_t(const int64_t *indptr, const int32_t *indices, const float *values,
    #     int64_t nnz, int64_t rows, int64_t cols, const float *w, int64_t n, float *y);
    "fp4swift_csr_matmul_t": (c_int32, [i64p, i32p, f32p, c_int64, c_int64, c_int64, f32p, c_int64, f32p]),
    # int32_t fp4swift_linear_recipe_named(const char *name, fp4swift_linear_recipe *out);
    "fp4swift_linear_recipe_named": (c_int32, [c_char_p, RecipeP]),
    # int32_t fp4swift_linear_saved_sizes(int64_t tokens, int64_t in_features,
    #     const fp4swift_linear_recipe *recipe, int64_t *x_codes_len, int64_t *x_scales_len,
    #     int64_t *residual_capacity, int64_t *x_scale_bytes_len);
    "fp4swift_linear_saved_sizes": (c_int32, [c_int64, c_int64, RecipeP, i64p, i64p, i64p, i64p]),
    # int32_t fp4swift_linear_forward(const float *x, int64_t tokens, int64_t in_features, const float *w,
    #     int64_t out_features, const float *bias, const fp4swift_linear_recipe *recipe, float *y,
    #     fp4swift_linear_saved *saved);
    "fp4swift_linear_forward": (c_int32, [f32p, c_int64, c_int64, f32p, c_int64, f32p, RecipeP, f32p, SavedP]),
    # int32_t fp4swift_linear_prepare_input(const float *x, int64_t tokens, int64_t in_features,
    #     const fp4swift_linear_recipe *recipe, float *x_operand, fp4swift_linear_saved *saved);
    "fp4swift_linear_prepare_input": (c_int32, [f32p, c_int64, c_int64, RecipeP, f32p, SavedP]),
    # int32_t fp4swift_linear_forward_prepared(const float *x_operand, int64_t tokens, int64_t in_features,
    #     const float *w, int64_t out_features, const float *bias, const fp4swift_linear_recipe *recipe,
    #     float *y, const fp4swift_linear_saved *saved);
    "fp4swift_linear_forward_prepared": (c_int32, [f32p, c_int64, c_int64, f32p, c_int64, f32p, RecipeP, f32p,
                                                   SavedP]),
    # int32_t fp4swift_linear_forward_on_codes(int64_t in_features, const fp4swift_linear_recipe *recipe,
    #     int32_t *on_codes);
    "fp4swift_linear_forward_on_codes": (c_int32, [c_int64, RecipeP, i32p]),
    # int32_t fp4swift_linear_backward(const float *dy, int64_t tokens, int64_t out_features, const float *x,
    #     const float *w, int64_t in_features, const fp4swift_linear_recipe *recipe,
    #     const fp4swift_linear_saved *saved, float *dx, float *dw, float *db);
    "fp4swift_linear_backward": (c_int32, [f32p, c_int64, c_int64, f32p, f32p, c_int64, RecipeP, SavedP, f32p, f32p, f32p]),
    # int32_t fp4swift_quartet_saved_sizes(int64_t tokens, int64_t in_features, int64_t *x_codes_len,
    #     int64_t *x_scales_len, int64_t *x_mask_len);
    "fp4swift_quartet_saved_sizes": (c_int32, [c_int64, c_int64, i64p, i64p, i64p]),
    # int32_t fp4swift_quartet_forward(const float *x, int64_t tokens, int64_t in_features, const float *w,
    #     int64_t out_features, const float *bias, float *y, uint8_t *x_codes, int64_t x_codes_len,
    #     float *x_scales, int64_t x_scales_len, uint8_t *x_mask, int64_t x_mask_len, int32_t gemm);
    "fp4swift_quartet_forward": (c_int32, [f32p, c_int64, c_int64, f32p, c_int64, f32p, f32p,
                                           u8p, c_int64, f32p, c_int64, u8p, c_int64, c_int32]),
    # int32_t fp4swift_quartet_backward(const float *dy, int64_t tokens, int64_t out_features, const float *w,
    #     int64_t in_features, const uint8_t *x_codes, int64_t x_codes_len, const float *x_scales,
    #     int64_t x_scales_len, const uint8_t *x_mask, int64_t x_mask_len, uint64_t seed, uint64_t call,
    #     float *dx, float *dw, float *db, int32_t gemm);
    "fp4swift_quartet_backward": (c_int32, [f32p, c_int64, c_int64, f32p, c_int64, u8p, c_int64, f32p, c_int64,
                                            u8p, c_int64, c_uint64, c_uint64, f32p, f32p, f32p, c_int32]),
    # int32_t fp4swift_gemm(const fp4swift_gemm_operand *a, const fp4swift_gemm_operand *b, int32_t path,
    #     float *c, int64_t c_len);
    "fp4swift_gemm": (c_int32, [POINTER(GemmOperand), POINTER(GemmOperand), c_int32, f32p, c_int64]),
    # int32_t fp4swift_gemm_default_path(int32_t *path);
    "fp4swift_gemm_default_path": (c_int32, [i32p]),
    # int32_t fp4swift_gemm_path_supported(int32_t path, int32_t *supported);
    "fp4swift_gemm_path_supported": (c_int32, [c_int32, i32p]),
}


class FP4Error(Exception):
    """Base of the errors the Swift library reports."""


class FP4ValueError(FP4Error, ValueError):
    """An argument the library rejected (shape, name, range, buffer length)."""


class NonFiniteError(FP4ValueError):
    """Input holds NaN or inf where the operation cannot represent it."""


class FP4StateError(FP4Error, RuntimeError):
    """A handle (such as saved backward state) used outside its life cycle."""


class FP4InternalError(FP4Error, RuntimeError):
    """A bug in fp4swift: please report it with the message."""


_STATUS_ERRORS = {
    INVALID_ARGUMENT: FP4ValueError,
    NONFINITE: NonFiniteError,
    INVALID_STATE: FP4StateError,
    INTERNAL: FP4InternalError,
}

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_REPO_SOURCES = _PACKAGE_DIR.parent.parent / "Sources"


def library_path() -> pathlib.Path:
    """Where the library is loaded from: $FP4SWIFT_LIBRARY, else next to this file."""
    override = os.environ.get("FP4SWIFT_LIBRARY")
    return pathlib.Path(override) if override else _PACKAGE_DIR / "libfp4swift.so"


def _warn_if_stale(path: pathlib.Path) -> None:
    # An editable install keeps the .so it built; edits to Sources/ need a rebuild.
    if not _REPO_SOURCES.is_dir():
        return
    built = path.stat().st_mtime
    newest = max((p.stat().st_mtime for p in _REPO_SOURCES.rglob("*") if p.suffix in (".swift", ".h", ".c")),
                 default=0.0)
    if newest > built:
        warnings.warn(
            f"{path} is older than the Swift sources in {_REPO_SOURCES}; run `pip install -e .` to rebuild it",
            RuntimeWarning,
            stacklevel=3,
        )


def _load() -> ctypes.CDLL:
    path = library_path()
    if not path.exists():
        raise ImportError(
            f"fp4swift's Swift library is missing at {path}. Build it with `pip install -e .` "
            "from the repository root (needs swift and libopenblas-dev)."
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise ImportError(f"cannot load {path}: {e}. Is OpenBLAS installed (apt-get install libopenblas-dev)?") from e
    try:
        version = lib.fp4swift_abi_version()
    except AttributeError as e:
        raise ImportError(f"{path} is not an fp4swift library (no fp4swift_abi_version)") from e
    if version != ABI_VERSION:
        raise ImportError(
            f"{path} speaks ABI version {version}, but this Python package expects {ABI_VERSION}: "
            "the library is stale or from another release. Rebuild it with `pip install -e .`."
        )
    for name, (restype, argtypes) in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as e:
            raise ImportError(f"{path} lacks {name}: rebuild it with `pip install -e .`") from e
        fn.restype = restype
        fn.argtypes = argtypes
    _warn_if_stale(path)
    return lib


lib = _load()


def last_error() -> str:
    msg = lib.fp4swift_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def check(status: int) -> None:
    """Raises the Python exception of a non-zero status, with the library's message."""
    if status != OK:
        raise _STATUS_ERRORS.get(status, FP4InternalError)(last_error() or f"fp4swift status {status}")


def names(table: int) -> list[str]:
    """Every name of one of the library's name tables, in index order."""
    out = []
    while True:
        name = lib.fp4swift_name(table, len(out))
        if name is None:
            return out
        out.append(name.decode())
