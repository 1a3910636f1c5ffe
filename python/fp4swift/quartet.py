"""Quartet building blocks (numerics.md §2 quest, §6) over numpy arrays: the blockwise
Walsh–Hadamard rotation and the clip mask of a quantization."""
from __future__ import annotations

import ctypes
from typing import Any, Optional

import numpy as np

from . import _native
from ._arrays import as_float32, as_matrix_shape, fptr
from .quantization import QuantizerSpec, _check_out


def hadamard(x: Any, block: int = 32, signs: Any = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """x rotated blockwise along its last axis by the normalized Hadamard matrix.

    Every 1×block segment x of each row becomes x · diag(d) · H, where H is the
    Sylvester–Hadamard matrix of size `block` divided by √block (so H·Hᵀ = I; H is also
    symmetric, so applying `hadamard` twice without signs returns x), and d = `signs`
    (±1, length `block`; all +1 when None). The inverse of a signed rotation is
    ``hadamard(y, block) * np.tile(signs, cols // block)``.

    block: a power of two dividing the last dimension (32, 64, 128, ...).
    out: optional C-contiguous float32 array of x's shape to write into (may be x itself:
    the rotation then happens in place).
    Returns float32 with x's shape (`out` when given).
    """
    a = as_float32(x)
    if a.ndim == 0:
        raise ValueError("x must have at least one dimension (the rotated one is the last)")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)):
        raise TypeError(f"block must be an int, got {type(block).__name__}")
    block = int(block)
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    rows, cols = as_matrix_shape(a.shape)
    if cols % block:
        raise ValueError(f"block {block} must divide the last dimension, got {cols}")
    d = None
    if signs is not None:
        d = as_float32(signs, "signs")
        if d.shape != (block,):
            raise ValueError(f"signs must have shape ({block},), got {d.shape}")
        if not np.all(np.abs(d) == 1):
            raise ValueError("signs must hold only +1 and -1")
    out = np.empty(a.shape, dtype=np.float32) if out is None else _check_out(out, a.shape)
    _native.check(_native.lib.fp4swift_hadamard(fptr(a), rows, cols, block, fptr(d) if d is not None else None,
                                                fptr(out)))
    return out


def clip_mask(x: Any, fmt: str = "e2m1", granularity: str = "block", scale_rule: str = "quest",
              block: Optional[int] = None, packed: bool = False) -> np.ndarray:
    """Which elements of x survive quantization unclipped (numerics.md §2, quest; Quartet's backward).

    True where |x / s| < fmax strictly (QuEST e2m1: |x / s| < 6), with s the scale the
    quantizer (fmt, granularity, scale_rule, block) gives x's group; False where the value
    clipped or its group holds NaN/inf; True in all-zero groups. Defaults: QuEST on e2m1
    groups of 32 along the last axis.

    packed=False: a bool array of x's shape. packed=True: the library's storage, one bit per
    element, uint8 [ceil(n / 8)], element i = bit (i % 8) of byte i // 8 (LSB first:
    ``np.unpackbits(m, bitorder="little")[:n]``).
    """
    a = as_float32(x)
    rows, cols = as_matrix_shape(a.shape)
    spec = QuantizerSpec.make(fmt, granularity, scale_rule, block=block)
    q = spec.to_c()
    mask = np.zeros((a.size + 7) // 8, dtype=np.uint8)
    _native.check(_native.lib.fp4swift_clip_mask(fptr(a), rows, cols, ctypes.byref(q), mask.ctypes.data_as(_native.u8p), mask.size))
    if packed:
        return mask
    return np.unpackbits(mask, bitorder="little")[: a.size].astype(bool).reshape(a.shape)
