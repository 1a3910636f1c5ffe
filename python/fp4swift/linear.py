"""The FP4 linear layer (numerics.md §6) over numpy arrays: `linear_forward`,
`linear_backward`, the saved state between them, and `prepare_input` for layers that share X."""
from __future__ import annotations

import ctypes
import itertools
from typing import Any, Optional, Tuple

import numpy as np

from . import _native
from ._arrays import as_float32, as_matrix_shape, cptr, farg, fptr
from .outliers import CSR
from .recipe import Recipe, _recipe_c, gemm_mode


# Call counter of the backward's randomness (quartet's signs and draws, stochastic rounding of dY):
# each forward takes the next value, so a retained backward repeats its draws and every new
# forward/backward pair gets fresh ones.
_CALLS = itertools.count()


def _call_seed(seed: int, call: int) -> int:
    """A per-call seed: seed + (call + 1)·golden-ratio constant mod 2^64 (the counter-based
    generator mixes it further)."""
    return (int(seed) + (call + 1) * 0x9E3779B97F4A7C15) % 2**64


class LinearSaved:
    """What `linear_forward` keeps for `linear_backward`: X_q as packed codes + scales and the
    sparse OCC residual (never a float32 copy of X, unless the recipe keeps X in float32,
    in which case it holds a reference to x itself). W is referenced, not copied: the
    backward recomputes W_q from it, so do not modify w in between."""

    def __init__(self, recipe: Recipe, x_shape: Tuple[int, ...], tokens: int, in_features: int, out_features: int,
                 w: np.ndarray, has_bias: bool, draw_seed: bool = True) -> None:
        self.recipe = recipe
        self.x_shape = x_shape
        self.tokens, self.in_features, self.out_features = tokens, in_features, out_features
        self.w = w
        self.has_bias = has_bias
        self.x: Optional[np.ndarray] = None
        rc = _recipe_c(recipe)
        #: Seed of the backward's stochastic rounding of dY: the recipe's, mixed with this
        #: forward's call number, so every forward/backward pair draws afresh and a retained
        #: backward repeats its draws.
        #: A prepared input's state takes no call number (draw_seed=False): each layer sharing it
        #: takes its own, so the sequence of draws is the one separate forwards would use.
        self.gradient_seed = _call_seed(rc.grad_seed, next(_CALLS)) if rc.grad_stochastic and draw_seed else rc.grad_seed
        codes_len, scales_len, cap, bytes_len = rc.saved_sizes(tokens, in_features)
        self.x_codes = np.empty(codes_len, dtype=np.uint8)
        # Scales in their stored form: float32, or the e8m0 / e4m3 bytes of e8m0 and nvfp4.
        self.x_scales = np.empty(scales_len, dtype=np.float32)
        self.x_scale_bytes = np.empty(bytes_len, dtype=np.uint8)
        self.residual_indptr = np.zeros(tokens + 1 if cap else 0, dtype=np.int64)
        self.residual_indices = np.empty(cap, dtype=np.int32)
        self.residual_values = np.empty(cap, dtype=np.float32)
        self.struct = _native.LinearSaved(
            cptr(self.x_codes, ctypes.c_uint8, _native.u8p), codes_len, fptr(self.x_scales), scales_len, 1.0,
            cptr(self.residual_indptr, ctypes.c_int64, _native.i64p) if cap else None,
            cptr(self.residual_indices, ctypes.c_int32, _native.i32p) if cap else None,
            fptr(self.residual_values) if cap else None, cap, 0,
            cptr(self.x_scale_bytes, ctypes.c_uint8, _native.u8p) if bytes_len else None, bytes_len)
        self.consumed = False

    @classmethod
    def _sharing(cls, prepared: "PreparedInput", out_features: int, w: np.ndarray, has_bias: bool) -> "LinearSaved":
        """A layer's saved state that refers to a prepared input's buffers (read-only in the
        backward, so every layer sharing them can run its backward, in any order)."""
        src = prepared.state
        s = cls.__new__(cls)
        s.recipe, s.x_shape, s.tokens, s.in_features = src.recipe, src.x_shape, src.tokens, src.in_features
        s.out_features, s.w, s.has_bias, s.x = out_features, w, has_bias, src.x
        rc = _recipe_c(s.recipe)
        s.gradient_seed = _call_seed(rc.grad_seed, next(_CALLS)) if rc.grad_stochastic else rc.grad_seed
        s.x_codes, s.x_scales, s.x_scale_bytes = src.x_codes, src.x_scales, src.x_scale_bytes
        s.residual_indptr, s.residual_indices, s.residual_values = src.residual_indptr, src.residual_indices, src.residual_values
        s.struct = _native.LinearSaved.from_buffer_copy(src.struct)
        s.consumed = False
        return s

    @property
    def residual_nnz(self) -> int:
        return 0 if self.consumed else int(self.struct.residual_nnz)

    @property
    def residual(self) -> Optional[CSR]:
        """The OCC residual ΔX as CSR (None without compensation)."""
        if self.consumed or not self.residual_indptr.size:
            return None
        n = self.residual_nnz
        return CSR(self.residual_indptr, self.residual_indices[:n], self.residual_values[:n],
                   (self.tokens, self.in_features))

    @property
    def nbytes(self) -> int:
        """Bytes this state holds for the backward: codes, scales and the used part of the
        residual (a float32-input recipe: the size of the referenced x); 0 once released."""
        if self.consumed:
            return 0
        if self.x is not None:
            return int(self.x.nbytes)
        n = self.residual_nnz
        res = self.residual_indptr.nbytes + n * (4 + 4) if self.residual_indptr.size else 0
        return int(self.x_codes.nbytes + self.x_scales.nbytes + self.x_scale_bytes.nbytes + res)

    def release(self) -> None:
        """Frees the buffers; a later backward raises FP4StateError."""
        self.consumed = True
        self.x_codes = self.x_scales = self.x_scale_bytes = None  # type: ignore[assignment]
        self.residual_indices = self.residual_values = None  # type: ignore[assignment]
        self.residual_indptr = None  # type: ignore[assignment]
        self.x = None
        self.struct = None  # type: ignore[assignment]




class QuartetSaved(LinearSaved):
    """What a quartet forward keeps: X_q (rotated basis) as packed e2m1 codes + scales, the clip
    mask m_x (1 bit per element) and the call number of its backward's random draws."""

    def __init__(self, recipe: Recipe, x_shape: Tuple[int, ...], tokens: int, in_features: int, out_features: int,
                 w: np.ndarray, has_bias: bool, call: int) -> None:
        self.recipe = recipe
        self.x_shape = x_shape
        self.tokens, self.in_features, self.out_features = tokens, in_features, out_features
        self.w = w
        self.has_bias = has_bias
        self.x = None
        self.call = call
        lens = [ctypes.c_int64() for _ in range(3)]
        _native.check(_native.lib.fp4swift_quartet_saved_sizes(tokens, in_features, *(ctypes.byref(v) for v in lens)))
        self.x_codes = np.empty(lens[0].value, dtype=np.uint8)
        self.x_scales = np.empty(lens[1].value, dtype=np.float32)
        self.x_mask = np.empty(lens[2].value, dtype=np.uint8)
        self.residual_indptr = np.zeros(0, dtype=np.int64)
        self.consumed = False

    @property
    def residual_nnz(self) -> int:
        return 0

    @property
    def residual(self) -> Optional[CSR]:
        return None

    @property
    def nbytes(self) -> int:
        if self.consumed:
            return 0
        return int(self.x_codes.nbytes + self.x_scales.nbytes + self.x_mask.nbytes)

    def release(self) -> None:
        super().release()
        self.x_mask = None  # type: ignore[assignment]


def _weight(w: Any) -> np.ndarray:
    wa = as_float32(w, "w")
    if wa.ndim != 2:
        raise ValueError(f"w must be a 2-D [out_features, in_features] array, got shape {wa.shape}")
    return wa


class PreparedInput:
    """The forward's work on one X under one recipe, done once by `prepare_input`: OCC, the
    codes, scales and residual saved for the backward, and the forward GEMM's X operand
    Q(X_c) + ΔX. None of it depends on W, so layers that read the same X under the same
    recipe (q/k/v projections; gate/up) can share it: `linear_forward(None, w, b, recipe,
    prepared=p)` then only quantizes W and runs the GEMM, with results equal to a plain
    `linear_forward(x, ...)` bit for bit. Their saved states share its buffers (each reports
    them in its nbytes)."""

    __slots__ = ("recipe", "x", "state", "operand")

    def __init__(self, recipe: Recipe, x: np.ndarray, state: LinearSaved, operand: Optional[np.ndarray]) -> None:
        self.recipe, self.x, self.state, self.operand = recipe, x, state, operand

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.x.shape


def _linear_recipe(recipe: Any) -> Recipe:
    r = Recipe.get(recipe) if isinstance(recipe, str) else recipe
    if not isinstance(r, Recipe):
        raise TypeError(f"recipe must be a name or a Recipe, got {type(recipe).__name__}")
    return r


def prepare_input(x: Any, recipe: Any = "wang2025", operand: Optional[np.ndarray] = None) -> PreparedInput:
    """Does a linear forward's work on X alone (see PreparedInput), for layers that share X.

    `operand`, when given, is a float32 C-contiguous [T, K] array to write the X operand into
    (reused across calls to spare an allocation); it must not be x. Quartet recipes (their
    operand depends on the rotation of W as well) are refused with ValueError.
    """
    r = _linear_recipe(recipe)
    if r.kind != "linear":
        raise ValueError(f"recipe {r.name!r} runs its own kernels; only linear recipes can share a prepared input")
    r.validate()
    xa = as_float32(x, "x")
    if xa.ndim == 0:
        raise ValueError("x must have at least one dimension (its last one is in_features)")
    T, K = as_matrix_shape(xa.shape)
    state = LinearSaved(r, xa.shape, T, K, 0, None, False, draw_seed=False)  # type: ignore[arg-type]
    if r.saved_input is None:
        state.x = xa
    rc = _recipe_c(r)
    if r.input is None:
        op = xa
    elif rc.forward_on_codes(K):
        op = None  # the forward GEMM reads X_q's codes from the saved state
    else:
        if operand is None:
            op = np.empty((T, K), dtype=np.float32)
        else:
            if not (isinstance(operand, np.ndarray) and operand.dtype == np.float32 and operand.flags.c_contiguous
                    and operand.flags.writeable and operand.size == T * K):
                raise ValueError(f"operand must be a writable C-contiguous float32 array of {T * K} elements")
            if np.shares_memory(operand, xa):
                raise ValueError("operand must not overlap x")
            op = operand.reshape(T, K)
    status = _native.lib.fp4swift_linear_prepare_input(farg(xa), T, K, rc.ref,
                                                       farg(op) if r.input is not None and op is not None else None,
                                                       ctypes.byref(state.struct))
    if status:
        _native.check(status)
    return PreparedInput(r, xa, state, op)


def linear_forward(x: Any, w: Any, b: Any = None, recipe: Any = "wang2025",
                   prepared: Optional[PreparedInput] = None) -> Tuple[np.ndarray, LinearSaved]:
    """Y = X·Wᵀ + b under a recipe (a name or a Recipe). X is [..., K], W [N, K], b [N] or None.

    Returns (y [..., N] float32, saved). Under a quantized recipe, NaN/inf in X or W raise
    NonFiniteError (codes cannot hold them); the fp32 recipe propagates them.
    `prepared` (from `prepare_input(x, recipe)`) skips the work on X; x may then be None.
    """
    r = _linear_recipe(recipe)
    if prepared is not None:
        return _forward_prepared(x, w, b, r, prepared)
    xa = as_float32(x, "x")
    if xa.ndim == 0:
        raise ValueError("x must have at least one dimension (its last one is in_features)")
    T, K = as_matrix_shape(xa.shape)
    wa, ba = _weight_and_bias(w, b, K)
    N = wa.shape[0]
    if r.kind == "quartet":
        r.validate()
        qs = QuartetSaved(r, xa.shape, T, K, N, wa, ba is not None, next(_CALLS))
        y = np.empty(xa.shape[:-1] + (N,), dtype=np.float32)
        _native.check(_native.lib.fp4swift_quartet_forward(
            fptr(xa), T, K, fptr(wa), N, fptr(ba) if ba is not None else None, fptr(y),
            qs.x_codes.ctypes.data_as(_native.u8p), qs.x_codes.size, fptr(qs.x_scales), qs.x_scales.size,
            qs.x_mask.ctypes.data_as(_native.u8p), qs.x_mask.size, gemm_mode(r)))
        return y, qs
    saved = LinearSaved(r, xa.shape, T, K, N, wa, ba is not None)
    if r.saved_input is None:
        saved.x = xa
    y = np.empty(xa.shape[:-1] + (N,), dtype=np.float32)
    status = _native.lib.fp4swift_linear_forward(farg(xa), T, K, farg(wa), N, farg(ba) if ba is not None else None,
                                                 _recipe_c(r).ref, farg(y), ctypes.byref(saved.struct))
    if status:
        _native.check(status)
    return y, saved


def _weight_and_bias(w: Any, b: Any, K: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """W as float32 [N, K] and b as float32 [N] (or None), checked against X's K."""
    wa = _weight(w)
    N = wa.shape[0]
    if wa.shape[1] != K:
        raise ValueError(f"x has {K} input features but w is {wa.shape} (expected [N, {K}])")
    ba = None
    if b is not None:
        ba = as_float32(b, "b")
        if ba.shape != (N,):
            raise ValueError(f"b must have shape ({N},), got {ba.shape}")
    return wa, ba


def _forward_prepared(x: Any, w: Any, b: Any, r: Recipe, p: PreparedInput) -> Tuple[np.ndarray, LinearSaved]:
    if not isinstance(p, PreparedInput):
        raise TypeError(f"prepared must come from prepare_input, got {type(p).__name__}")
    if p.recipe is not r and p.recipe != r:
        raise ValueError(f"prepared was made under recipe {p.recipe.name!r}, not {r.name!r}")
    if x is not None:
        xa = as_float32(x, "x")
        if xa.shape != p.x.shape or not np.shares_memory(xa, p.x):
            raise ValueError("x is not the array prepare_input saw (pass x=None to use the prepared one)")
    if p.state.consumed:
        raise _native.FP4StateError("this prepared input's buffers were released")
    T, K = p.state.tokens, p.state.in_features
    wa, ba = _weight_and_bias(w, b, K)
    N = wa.shape[0]
    y = np.empty(p.x.shape[:-1] + (N,), dtype=np.float32)
    status = _native.lib.fp4swift_linear_forward_prepared(farg(p.operand) if p.operand is not None else None, T, K,
                                                          farg(wa), N, farg(ba) if ba is not None else None,
                                                          _recipe_c(r).ref, farg(y), ctypes.byref(p.state.struct))
    if status:
        _native.check(status)
    return y, LinearSaved._sharing(p, N, wa, ba is not None)


def linear_backward(dy: Any, saved: LinearSaved, retain: bool = False, compute_dx: bool = True,
                    compute_dw: bool = True) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """(dx, dw, db) for the layer whose forward produced `saved`; db is None without bias,
    dx / dw None when not computed (compute_dx / compute_dw False skip their GEMMs).

    The saved state is released afterwards, so a second backward raises FP4StateError,
    unless retain=True.
    """
    if not isinstance(saved, LinearSaved):
        raise TypeError(f"saved must come from linear_forward, got {type(saved).__name__}")
    if saved.consumed:
        raise _native.FP4StateError("this saved state was already used by a backward (pass retain=True to keep it)")
    g = as_float32(dy, "dy")
    T, K, N = saved.tokens, saved.in_features, saved.out_features
    expected = saved.x_shape[:-1] + (N,)
    if g.shape != expected:
        raise ValueError(f"dy must have shape {expected}, got {g.shape}")
    dx = np.empty(saved.x_shape, dtype=np.float32) if compute_dx else None
    dw = np.empty((N, K), dtype=np.float32) if compute_dw else None
    db = np.empty(N, dtype=np.float32) if saved.has_bias else None
    if isinstance(saved, QuartetSaved):
        _native.check(_native.lib.fp4swift_quartet_backward(
            fptr(g), T, N, fptr(saved.w), K, saved.x_codes.ctypes.data_as(_native.u8p), saved.x_codes.size,
            fptr(saved.x_scales), saved.x_scales.size, saved.x_mask.ctypes.data_as(_native.u8p), saved.x_mask.size,
            int(saved.recipe.seed), int(saved.call), fptr(dx) if dx is not None else None,
            fptr(dw) if dw is not None else None, fptr(db) if db is not None else None, gemm_mode(saved.recipe)))
        if not retain:
            saved.release()
        return dx, dw, db
    rc = _recipe_c(saved.recipe)
    if saved.gradient_seed == rc.grad_seed:
        c = rc.ref  # the shared struct, read-only
    else:  # a per-call seed: a copy of the struct with it
        cs = _native.LinearRecipe.from_buffer_copy(rc.struct)
        cs.gradient.seed = saved.gradient_seed
        c = ctypes.byref(cs)
    status = _native.lib.fp4swift_linear_backward(
        farg(g), T, N, farg(saved.x) if saved.x is not None else None, farg(saved.w), K, c,
        ctypes.byref(saved.struct), farg(dx) if dx is not None else None, farg(dw) if dw is not None else None,
        farg(db) if db is not None else None)
    if status:
        _native.check(status)
    if not retain:
        saved.release()
    return dx, dw, db
