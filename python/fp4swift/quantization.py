"""Element codecs and quantizers (numerics.md §1–3) over numpy arrays."""
from __future__ import annotations

import ctypes
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _native
from ._arrays import as_float32, as_matrix_shape, check_choice, f64ptr, fptr, u8ptr

FORMATS = _native.names(_native.TABLE_FORMAT)
GRANULARITIES = _native.names(_native.TABLE_GRANULARITY)
SCALE_RULES = _native.names(_native.TABLE_SCALE_RULE)
ROUNDINGS = _native.names(_native.TABLE_ROUNDING)
#: Non-finite policies and their ABI values (FP4SWIFT_NONFINITE_*).
NONFINITE_CODES = {"propagate": _native.NONFINITE_PROPAGATE, "raise": _native.NONFINITE_RAISE}
NONFINITE_POLICIES = list(NONFINITE_CODES)
#: Granularities and their ABI values (FP4SWIFT_GRANULARITY_*; the same indices as the library's
#: name table, python/tests/test_abi_mirror.py checks).
GRANULARITY_CODES = {"tensor": _native.GRANULARITY_TENSOR, "row": _native.GRANULARITY_ROW,
                     "column": _native.GRANULARITY_COLUMN, "block": _native.GRANULARITY_BLOCK,
                     "block2d": _native.GRANULARITY_BLOCK2D}

#: Scale rules whose quantize() stores one byte per group (e8m0 exponents, e4m3 codes of sb).
BYTE_SCALE_RULES = ("e8m0", "nvfp4", "e8m0_ceil", "e8m0_even", "e8m0_rceil", "nvfp4_torchao")
#: Two-level rules: quantize() also returns a per-tensor scale (nvfp4: S; nvfp4_torchao: P).
TWO_LEVEL_SCALE_RULES = ("nvfp4", "nvfp4_torchao")
#: Largest `stochastic_bits` (0: exact-probability stochastic rounding).
MAX_STOCHASTIC_BITS = 32

#: Default block sizes when a block granularity is named without `block=`.
DEFAULT_BLOCK = {"block": 32, "block2d": 16}


@dataclass(frozen=True)
class FormatInfo:
    """Facts about an element format (numerics.md §1)."""

    name: str
    bits: int
    exp_bits: int
    man_bits: int
    bias: int
    max_exponent: int
    scale_only: bool
    max_value: float


def formats() -> list:
    """Names of every element format."""
    return list(FORMATS)


def format_info(fmt: str) -> FormatInfo:
    """Bit layout and range of an element format."""
    index = FORMATS.index(check_choice(fmt, FORMATS, "format"))
    info = _native.FormatInfo()
    _native.check(_native.lib.fp4swift_format_info_get(index, ctypes.byref(info)))
    return FormatInfo(fmt, info.bits, info.exp_bits, info.man_bits, info.bias, info.max_exponent,
                      bool(info.scale_only), float(info.max_value))


def set_num_threads(n: int) -> None:
    """Worker threads of the Swift kernels (results are identical for any count)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"thread count must be an int, got {type(n).__name__}")
    _native.check(_native.lib.fp4swift_set_num_threads(int(n)))


def get_num_threads() -> int:
    """Worker threads of the Swift kernels."""
    return int(_native.lib.fp4swift_get_num_threads())


def check_stochastic_bits(bits: Any, rounding: str) -> int:
    """`bits` as an int in 0..MAX_STOCHASTIC_BITS, non-zero only with stochastic rounding."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"stochastic_bits must be an int, got {type(bits).__name__}")
    if not 0 <= int(bits) <= MAX_STOCHASTIC_BITS:
        raise ValueError(f"stochastic_bits must lie in 0..{MAX_STOCHASTIC_BITS} (0: exact-probability "
                         f"stochastic rounding), got {bits}")
    if bits and rounding != "stochastic":
        raise ValueError(f"stochastic_bits={bits} applies to rounding='stochastic' only, not {rounding!r}")
    return int(bits)


def _parse_granularity(granularity: str, block: Optional[int]) -> Tuple[str, int]:
    """('block', 32) from 'block' + block=32 or from 'block(32)'."""
    if not isinstance(granularity, str):
        raise ValueError(f"granularity must be a name such as 'row' or 'block(32)', got {granularity!r}")
    m = re.fullmatch(r"(block2d|block)\((\d+)\)", granularity.strip())
    if m:
        kind, n = m.group(1), int(m.group(2))
        if block is not None and int(block) != n:
            raise ValueError(f"granularity {granularity!r} disagrees with block={block}")
        return kind, n
    kind = check_choice(granularity, GRANULARITIES, "granularity")
    if kind in DEFAULT_BLOCK:
        n = DEFAULT_BLOCK[kind] if block is None else block
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"block must be a positive int, got {n!r}")
        return kind, int(n)
    if block is not None:
        raise ValueError(f"block={block} applies to 'block' and 'block2d' granularities only, not {kind!r}")
    return kind, 0


@dataclass(frozen=True)
class QuantizerSpec:
    """A quantizer as data: format, granularity, scale rule, rounding, seed (numerics.md §2).

    stochastic_bits: 0 (stochastic rounding with the exact probability), or r in 1..32:
    r random bits added below the kept precision, then truncation, as hardware does it
    (numerics.md §1). Only with rounding='stochastic'.
    """

    fmt: str = "e2m1"
    granularity: str = "row"
    scale_rule: str = "absmax"
    rounding: str = "nearest_even"
    block: int = 0
    seed: int = 0
    nonfinite: str = "propagate"
    stochastic_bits: int = 0

    @staticmethod
    def make(fmt: str = "e2m1", granularity: str = "row", scale_rule: str = "absmax",
             rounding: str = "nearest_even", block: Optional[int] = None, seed: int = 0,
             nonfinite: str = "propagate", stochastic_bits: int = 0) -> "QuantizerSpec":
        check_choice(fmt, FORMATS, "format")
        kind, n = _parse_granularity(granularity, block)
        check_choice(scale_rule, SCALE_RULES, "scale rule")
        check_choice(rounding, ROUNDINGS, "rounding")
        check_choice(nonfinite, NONFINITE_POLICIES, "nonfinite policy")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        bits = check_stochastic_bits(stochastic_bits, rounding)
        return QuantizerSpec(fmt, kind, scale_rule, rounding, n, int(seed), nonfinite, bits)

    @property
    def granularity_label(self) -> str:
        return f"{self.granularity}({self.block})" if self.granularity in DEFAULT_BLOCK else self.granularity

    def to_c(self) -> _native.Quantizer:
        return _native.Quantizer(
            FORMATS.index(self.fmt), GRANULARITY_CODES[self.granularity], self.block,
            SCALE_RULES.index(self.scale_rule), ROUNDINGS.index(self.rounding),
            NONFINITE_CODES[self.nonfinite], self.seed, self.stochastic_bits,
        )

    def layout(self, rows: int, cols: int) -> Tuple[int, int]:
        """(tile_rows, tile_cols): the grid of scale groups of a [rows, cols] tensor."""
        tr, tc = ctypes.c_int64(), ctypes.c_int64()
        q = self.to_c()
        _native.check(_native.lib.fp4swift_group_layout(rows, cols, ctypes.byref(q), ctypes.byref(tr), ctypes.byref(tc)))
        return int(tr.value), int(tc.value)


def encode(values: Any, fmt: str, rounding: str = "nearest_even", seed: int = 0) -> np.ndarray:
    """Codes of unscaled values (one uint8 per element, same shape; numerics.md §1).

    Values above the format's max saturate (FP4, e4m3) or become inf (e5m2). FP4 formats
    cannot encode NaN or inf: that raises NonFiniteError naming the flat index.
    """
    x = as_float32(values, "values")
    check_choice(fmt, FORMATS, "format")
    check_choice(rounding, ROUNDINGS, "rounding")
    spec = QuantizerSpec.make(fmt=fmt, rounding=rounding, seed=seed)
    out = np.empty(x.shape, dtype=np.uint8)
    _native.check(_native.lib.fp4swift_encode(fptr(x), x.size, FORMATS.index(fmt), ROUNDINGS.index(rounding),
                                              spec.seed, u8ptr(out)))
    return out


def _as_code_bytes(codes: Any, name: str, top: int) -> np.ndarray:
    """codes as C-contiguous uint8, refusing non-integer dtypes and values outside 0..top
    (a plain cast would wrap 256 to 0 or truncate 3.7 to 3)."""
    c = np.asarray(codes)
    if c.size == 0:  # [] is float64 to numpy; an empty input has no codes to misread
        return np.empty(c.shape, dtype=np.uint8)
    if c.dtype.kind not in "ui" or c.dtype == np.bool_:
        raise TypeError(f"{name} must be an unsigned integer array, got dtype {c.dtype}")
    if c.min() < 0 or c.max() > top:
        raise ValueError(f"{name} must lie in 0..{top}")
    return np.ascontiguousarray(c, dtype=np.uint8)


def decode(codes: Any, fmt: str) -> np.ndarray:
    """Values of codes (one per uint8) as float32, same shape."""
    c = np.asarray(codes)
    if c.dtype.kind not in "ui" or c.dtype == np.bool_:
        raise TypeError(f"codes must be an unsigned integer array, got dtype {c.dtype}")
    if c.size and (c.min() < 0 or c.max() > 255):
        raise ValueError("codes must lie in 0..255")
    c = np.asarray(c, dtype=np.uint8, order="C")
    check_choice(fmt, FORMATS, "format")
    out = np.empty(c.shape, dtype=np.float32)
    _native.check(_native.lib.fp4swift_decode(u8ptr(c), c.size, FORMATS.index(fmt), fptr(out)))
    return out


def pack_fp4(codes: Any) -> np.ndarray:
    """Packs 4-bit codes two per byte (element 2i in the low nibble, odd count padded with 0)."""
    c = _as_code_bytes(codes, "codes", 15).reshape(-1)
    out = np.empty((c.size + 1) // 2, dtype=np.uint8)
    _native.check(_native.lib.fp4swift_pack_nibbles(u8ptr(c), c.size, u8ptr(out), out.size))
    return out


def unpack_fp4(packed: Any, count: int) -> np.ndarray:
    """The first `count` 4-bit codes of a packed byte array."""
    p = _as_code_bytes(packed, "packed", 255).reshape(-1)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"count must be an int, got {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    out = np.empty(count, dtype=np.uint8)
    _native.check(_native.lib.fp4swift_unpack_nibbles(u8ptr(p), p.size, count, u8ptr(out)))
    return out


def fake_quantize(x: Any, fmt: str = "e2m1", granularity: str = "row", scale_rule: str = "absmax",
                  rounding: str = "nearest_even", block: Optional[int] = None, seed: int = 0,
                  nonfinite: str = "propagate", out: Optional[np.ndarray] = None,
                  stochastic_bits: int = 0) -> np.ndarray:
    """Quantize and dequantize x in one pass: x̂ = round(x / s) · s per group (numerics.md §2).

    x: float array of any shape, viewed as [rows, cols] with the last axis as columns.
    granularity: 'tensor', 'row' (per token), 'column', 'block' / 'block(n)', 'block2d' / 'block2d(n)'.
    scale_rule: 'absmax', 'pow2', 'e8m0', 'nvfp4', 'absmax_div3', 'quest', and the reference
    implementations' rules 'e8m0_ceil', 'e8m0_even', 'e8m0_rceil' (torchao's / cuBLAS's E8M0
    modes) and 'nvfp4_torchao' (torchao's NVFP4); `SCALE_RULES` lists them.
    rounding: 'nearest_even', 'nearest_away', 'stochastic' (draws depend on seed and flat index).
    stochastic_bits: with 'stochastic', 0 (exact probability) or r in 1..32 random bits (numerics.md §1).
    nonfinite: 'propagate' sets every output of a group holding NaN/inf to NaN (and warns with
    the count); 'raise' raises NonFiniteError naming the first offending flat index.
    out: optional C-contiguous float32 array of x's shape to write into (may be x itself; an out
    that partly overlaps x gets x copied first, so the result is always that of a fresh out).
    Returns float32 with x's shape (`out` when given).
    """
    spec = QuantizerSpec.make(fmt, granularity, scale_rule, rounding, block, seed, nonfinite, stochastic_bits)
    return fake_quantize_with(x, spec, out)


def _check_out(out: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError("out must be a float32 numpy array")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out


def _unaliased(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`a`, or a copy of it when `out` overlaps it without being it: the kernels read and write
    element by element in groups, so `out is x` (the same buffer) works in place, but a shifted
    overlap would read inputs the call has already overwritten. Both arrays are C-contiguous,
    so overlapping address ranges mean shared elements."""
    if out.ctypes.data != a.ctypes.data and np.may_share_memory(a, out):
        return a.copy()
    return a


def fake_quantize_with(x: Any, spec: QuantizerSpec, out: Optional[np.ndarray] = None) -> np.ndarray:
    """`fake_quantize` with a prepared QuantizerSpec."""
    a = as_float32(x)
    rows, cols = as_matrix_shape(a.shape)
    if out is None:
        out = np.empty(a.shape, dtype=np.float32)
    else:
        a = _unaliased(a, _check_out(out, a.shape))
    bad = ctypes.c_int64(0)
    q = spec.to_c()
    _native.check(_native.lib.fp4swift_fake_quantize(fptr(a), rows, cols, ctypes.byref(q), fptr(out), ctypes.byref(bad)))
    if bad.value:
        warnings.warn(f"fake_quantize: {bad.value} group(s) held NaN or inf; their outputs are NaN",
                      RuntimeWarning, stacklevel=3)
    return out


@dataclass
class QuantizedTensor:
    """Packed codes and per-group scales of a quantized tensor.

    codes: uint8, FP4 packed two per byte over the flat index (element 2i in the low nibble),
    FP8 one per byte. scales: float32 [tile_rows, tile_cols], except the e8m0 rules (e8m0,
    e8m0_ceil, e8m0_even, e8m0_rceil: uint8 exponent bytes b, s = 2^(b−127)), nvfp4 (uint8 e4m3
    codes of sb, with `tensor_scale` S) and nvfp4_torchao (uint8 e4m3 codes of sb, with
    `tensor_scale` P: x̂ = q · (P · sb)).
    """

    codes: np.ndarray
    scales: np.ndarray
    shape: Tuple[int, ...]
    fmt: str
    spec: QuantizerSpec
    tensor_scale: float = 1.0
    _float_scales: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """Bytes of codes + stored scales (+4 for nvfp4's per-tensor S)."""
        return int(self.codes.nbytes + self.scales.nbytes + (4 if self.spec.scale_rule in TWO_LEVEL_SCALE_RULES else 0))

    @property
    def bits_per_element(self) -> float:
        n = int(np.prod(self.shape, dtype=np.int64))
        return 8.0 * self.nbytes / n if n else 0.0

    def dequantize(self) -> np.ndarray:
        """x̂ as float32 with the original shape."""
        rows, cols = as_matrix_shape(self.shape)
        out = np.empty(self.shape, dtype=np.float32)
        q = self.spec.to_c()
        s = np.ascontiguousarray(self._float_scales, dtype=np.float32)
        _native.check(_native.lib.fp4swift_dequantize(u8ptr(self.codes), self.codes.size, rows, cols, ctypes.byref(q),
                                                      fptr(s), s.size, float(self.tensor_scale), fptr(out)))
        return out


def quantize(x: Any, fmt: str = "e2m1", granularity: str = "row", scale_rule: str = "absmax",
             rounding: str = "nearest_even", block: Optional[int] = None, seed: int = 0,
             nonfinite: str = "raise", stochastic_bits: int = 0) -> QuantizedTensor:
    """Quantize x to packed codes + scales (numerics.md §1–2); same arguments as `fake_quantize`.

    Codes cannot hold NaN or inf: non-finite input raises NonFiniteError naming the first
    offending flat index (nonfinite='raise' is the only policy).
    """
    if nonfinite != "raise":
        raise ValueError("quantize cannot encode NaN/inf: nonfinite must be 'raise' (use fake_quantize to propagate)")
    spec = QuantizerSpec.make(fmt, granularity, scale_rule, rounding, block, seed, "raise", stochastic_bits)
    return quantize_with(x, spec)


def quantize_with(x: Any, spec: QuantizerSpec) -> QuantizedTensor:
    """`quantize` with a prepared QuantizerSpec."""
    a = as_float32(x)
    rows, cols = as_matrix_shape(a.shape)
    tr, tc = spec.layout(rows, cols)
    n = a.size
    codes = np.empty((n + 1) // 2 if format_info(spec.fmt).bits == 4 else n, dtype=np.uint8)
    scales = np.empty((tr, tc), dtype=np.float32)
    scale_bytes = np.empty((tr, tc), dtype=np.uint8)
    S = ctypes.c_float(1.0)
    q = spec.to_c()
    _native.check(_native.lib.fp4swift_quantize(fptr(a), rows, cols, ctypes.byref(q), u8ptr(codes), codes.size,
                                                fptr(scales), u8ptr(scale_bytes), scales.size, ctypes.byref(S)))
    stored = scale_bytes if spec.scale_rule in BYTE_SCALE_RULES else scales
    return QuantizedTensor(codes, stored, tuple(a.shape), spec.fmt, spec, float(S.value), scales)


def fidelity(x: Any, x_hat: Any) -> Dict[str, float]:
    """Cosine similarity, MSE and SNR (dB) between x and its reconstruction (numerics.md §5)."""
    a, b = as_float32(x, "x"), as_float32(x_hat, "x_hat")
    if a.shape != b.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {a.shape} and {b.shape}")
    out = np.empty(3, dtype=np.float64)
    _native.check(_native.lib.fp4swift_fidelity(fptr(a), fptr(b), a.size, f64ptr(out)))
    return {"cosine": float(out[0]), "mse": float(out[1]), "snr_db": float(out[2])}
