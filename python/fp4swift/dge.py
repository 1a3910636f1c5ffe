"""DGE, the differentiable gradient estimator (numerics.md §4), over numpy arrays."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._arrays import as_float32, check_choice, check_positive, fptr
from .quantization import FORMATS


def dge_derivative(v: Any, fmt: str = "e2m1", k: float = 5.0, clamp: float = 3.0) -> np.ndarray:
    """f'(v), the DGE derivative at values v on the grid scale (v = W / s_w; numerics.md §4).

    (1/k)·|2x/δ − 1|^(1/k − 1) clamped to `clamp`, with x the offset of |v| in its grid
    interval [a, a+δ); 0 for |v| above the format's max.
    """
    a = as_float32(v, "v")
    check_choice(fmt, FORMATS, "format")
    out = np.empty(a.shape, dtype=np.float32)
    _native.check(_native.lib.fp4swift_dge_derivative(fptr(a), a.size, FORMATS.index(fmt),
                                                      check_positive("k", k), check_positive("clamp", clamp), fptr(out)))
    return out


def dge_surrogate(v: Any, fmt: str = "e2m1", k: float = 5.0) -> np.ndarray:
    """The smooth staircase f whose derivative DGE uses: maps each grid interval onto itself."""
    a = as_float32(v, "v")
    check_choice(fmt, FORMATS, "format")
    out = np.empty(a.shape, dtype=np.float32)
    _native.check(_native.lib.fp4swift_dge_surrogate(fptr(a), a.size, FORMATS.index(fmt), check_positive("k", k), fptr(out)))
    return out
