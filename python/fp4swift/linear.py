"""DGE, OCC and the FP4 linear layer (spec §4–6) over numpy arrays, and recipes as data."""
from __future__ import annotations

import ctypes
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _native
from ._arrays import as_float32, as_matrix_shape, carg, check_choice, cptr, farg, fptr
from .quantization import FORMATS, QuantizerSpec
from .roles import ROLES

OCC_GROUPS = ["tensor", "row"]


def _i64p(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.i64p)


def _i32p(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_native.i32p)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    a = float(alpha)
    if not 0.5 < a <= 1.0:
        raise ValueError(f"alpha must lie in (0.5, 1], got {alpha}")
    return a


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (v > 0) or not np.isfinite(v):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return v


# ---------------------------------------------------------------------------------------
# DGE


def dge_derivative(v: Any, fmt: str = "e2m1", k: float = 5.0, clamp: float = 3.0) -> np.ndarray:
    """f'(v), the DGE derivative at values v on the grid scale (v = W / s_w; spec §4).

    (1/k)·|2x/δ − 1|^(1/k − 1) clamped to `clamp`, with x the offset of |v| in its grid
    interval [a, a+δ); 0 for |v| above the format's max.
    """
    a = as_float32(v, "v")
    check_choice(fmt, FORMATS, "format")
    out = np.empty(a.shape, dtype=np.float32)
    _native.check(_native.lib.fp4swift_dge_derivative(fptr(a), a.size, FORMATS.index(fmt),
                                                      _check_positive("k", k), _check_positive("clamp", clamp), fptr(out)))
    return out


def dge_surrogate(v: Any, fmt: str = "e2m1", k: float = 5.0) -> np.ndarray:
    """The smooth staircase f whose derivative DGE uses: maps each grid interval onto itself."""
    a = as_float32(v, "v")
    check_choice(fmt, FORMATS, "format")
    out = np.empty(a.shape, dtype=np.float32)
    _native.check(_native.lib.fp4swift_dge_surrogate(fptr(a), a.size, FORMATS.index(fmt), _check_positive("k", k), fptr(out)))
    return out


# ---------------------------------------------------------------------------------------
# OCC


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
    alpha = _check_alpha(alpha)
    per_row = check_choice(per, OCC_GROUPS, "OCC group") == "row"
    groups = (rows if per_row else 1) if a.size else 0  # an empty tensor has no groups
    lo = np.empty(groups, dtype=np.float32)
    hi = np.empty(groups, dtype=np.float32)
    _native.check(_native.lib.fp4swift_occ_thresholds(fptr(a), rows, cols, alpha, int(per_row), fptr(lo), fptr(hi), groups))
    return lo, hi


def occ(x: Any, alpha: float = 0.99, per: str = "tensor") -> Tuple[np.ndarray, CSR]:
    """Outlier clamping (spec §5): (X_c, ΔX) with X_c = min(max(X, lo), hi) and the residual
    ΔX = X − X_c as CSR over the [rows, cols] view of x. X_c keeps x's shape."""
    a = as_float32(x)
    rows, cols = as_matrix_shape(a.shape)
    alpha = _check_alpha(alpha)
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


# ---------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    """A linear layer's precision recipe as data (spec §6).

    input / weight / gradient: the quantizer of X, W and dY (None = float32). The gradient
    quantizer, when set, is applied to dY before both backward GEMMs.
    occ, alpha, occ_per, compensate: outlier clamping of X and its sparse compensation.
    dge, k, clamp: DGE in the weight gradient (off = straight-through estimator).
    kind: "linear" (the layer above) or "quartet" (the Quartet layer of spec §6, with its own
    kernels: Hadamard rotations, QuEST forward, stochastic absmax_div3 backward; there the
    quantizer fields only describe it). seed: the randomness of the recipe's rotations (quartet
    backward signs; the fixed signs of wgrad_hadamard).
    wgrad_hadamard: 0, or the block b of a random Hadamard transform of the weight-gradient GEMM's
    operands along T (NVFP4): dW = Q_gradient(dYᵀ·H_b)·Q_input(X_qᵀ·H_b)ᵀ, H_b = diag(d)·H_b,
    T zero-padded to a multiple of b.
    backward_weight / backward_input: W in the input-gradient GEMM (dX = dY·W_b) and X in the
    weight-gradient GEMM (dW = dYᵀ·X_b): "forward" (the forward's W_q / X_q, the default), None
    (float32) or their own QuantizerSpec (e.g. FP8 backward GEMMs under an FP4 forward, spec §7).
    The forward saves the codes of X_b.
    roles: the module policy of `fp4swift.torch.convert`, as (role, recipe name or None) pairs:
    roles not listed (of "attention", "mlp", "lm_head", "other"; see `module_role`) get this
    recipe, None keeps the module in float32. Default: the LM head stays float32.
    """

    name: str
    input: Optional[QuantizerSpec] = None
    weight: Optional[QuantizerSpec] = None
    gradient: Optional[QuantizerSpec] = None
    occ: bool = False
    alpha: float = 0.99
    occ_per: str = "tensor"
    compensate: bool = True
    dge: bool = False
    k: float = 5.0
    clamp: float = 3.0
    description: str = ""
    kind: str = "linear"
    seed: int = 0
    wgrad_hadamard: int = 0
    backward_weight: Union[str, QuantizerSpec, None] = "forward"
    backward_input: Union[str, QuantizerSpec, None] = "forward"
    roles: Tuple[Tuple[str, Optional[str]], ...] = (("lm_head", None),)

    @staticmethod
    def get(name: str) -> "Recipe":
        """A built-in recipe by name (see `recipes()`)."""
        if isinstance(name, Recipe):
            return name
        check_choice(name, list(_RECIPES), "recipe")
        return _RECIPES[name]

    def replace(self, **changes: Any) -> "Recipe":
        """A modified copy. Besides the fields, accepts shortcuts applied to both X and W:
        `fmt=`, `granularity=` (e.g. 'tensor' for tensor-wise scaling), and
        `grad_fp8=True` (dY cast to e5m2 with a per-tensor pow2 scale, as the paper's framework)."""
        fmt = changes.pop("fmt", None)
        gran = changes.pop("granularity", None)
        grad_fp8 = changes.pop("grad_fp8", None)
        if self.kind == "quartet" and (fmt is not None or gran is not None or grad_fp8 is not None):
            raise ValueError("the quartet recipe's formats and groups are fixed (spec §6); fmt=, granularity= and "
                             "grad_fp8= do not apply")
        r = dataclasses.replace(self, **changes)
        for attr in ("input", "weight"):
            q = getattr(r, attr)
            if q is not None and (fmt is not None or gran is not None):
                q = QuantizerSpec.make(fmt or q.fmt, gran or q.granularity_label, q.scale_rule, q.rounding,
                                       None, q.seed, q.nonfinite)
                r = dataclasses.replace(r, **{attr: q})
        if grad_fp8 is not None:
            r = dataclasses.replace(r, gradient=FP8_GRADIENT if grad_fp8 else None)
        r.validate()
        return r

    @property
    def saved_input(self) -> Optional[QuantizerSpec]:
        """The quantizer of the X the forward saves for the weight-gradient GEMM (None: float32 X)."""
        return self.input if self.backward_input == "forward" else self.backward_input  # type: ignore[return-value]

    def gemm_operands(self) -> Dict[str, Tuple[Optional[QuantizerSpec], Optional[QuantizerSpec]]]:
        """The quantizers of each GEMM's two operands (None: float32):
        forward (X, W), input_grad (dY, W_b), weight_grad (dY, X_b)."""
        w_b = self.weight if self.backward_weight == "forward" else self.backward_weight
        return {"forward": (self.input, self.weight),
                "input_grad": (self.gradient, w_b),  # type: ignore[dict-item]
                "weight_grad": (self.gradient, self.saved_input)}

    def for_role(self, role: str) -> Optional["Recipe"]:
        """The recipe `fp4swift.torch.convert` gives a module of this role (None: leave it float32)."""
        check_choice(role, list(ROLES), "module role")
        for r, name in self.roles:
            if r == role:
                return None if name is None else Recipe.get(name)
        return self

    @property
    def grad_fp8(self) -> bool:
        return self.gradient is not None and self.gradient.fmt == "e5m2"

    def validate(self) -> None:
        if self.__dict__.get("_valid"):  # fields are frozen: a recipe that passed once stays valid
            return
        self._validate()
        object.__setattr__(self, "_valid", True)

    def __getstate__(self) -> Dict[str, Any]:
        # pickle / copy / deepcopy: the fields only, not the caches (_valid, _c)
        return {k: v for k, v in self.__dict__.items() if k not in _RECIPE_CACHES}

    def _validate(self) -> None:
        check_choice(self.kind, RECIPE_KINDS, "recipe kind")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= int(self.seed) < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {self.seed!r}")
        if self.kind == "quartet":
            if self.occ or self.dge:
                raise ValueError("the quartet recipe has no OCC or DGE")
            return
        _check_alpha(self.alpha)
        check_choice(self.occ_per, OCC_GROUPS, "OCC group")
        _check_positive("k", self.k)
        _check_positive("clamp", self.clamp)
        if self.occ and self.input is None:
            raise ValueError("OCC needs a quantized input (recipe.input is None)")
        if self.dge and self.weight is None:
            raise ValueError("DGE needs a quantized weight (recipe.weight is None)")
        for name in ("backward_weight", "backward_input"):
            v = getattr(self, name)
            if not (v == "forward" or v is None or isinstance(v, QuantizerSpec)):
                raise TypeError(f"{name} must be 'forward', None (float32) or a QuantizerSpec, got {v!r}")
        if self.occ and self.backward_input != "forward":
            raise ValueError("OCC needs backward_input='forward' (its residual belongs to the forward's X_q)")
        for role, name in self.roles:
            check_choice(role, list(ROLES), "module role")
            if name is not None and name != self.name:
                Recipe.get(name)
        c = self.to_c()
        sizes = (ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64())
        _native.check(_native.lib.fp4swift_linear_saved_sizes(1, 0, ctypes.byref(c), *(ctypes.byref(v) for v in sizes)))

    def to_c(self) -> _native.LinearRecipe:
        if self.kind != "linear":
            raise ValueError(f"a {self.kind!r} recipe runs its own kernels and has no fp4swift_linear_recipe form")
        def q(spec: Optional[QuantizerSpec]) -> Tuple[int, _native.Quantizer]:
            return (0, _native.Quantizer()) if spec is None else (1, spec.to_c())

        def backward(v: Union[str, QuantizerSpec, None]) -> Tuple[int, _native.Quantizer]:
            if v == "forward":
                return _native.BACKWARD_FORWARD, _native.Quantizer()
            if v is None:
                return _native.BACKWARD_FLOAT32, _native.Quantizer()
            return _native.BACKWARD_QUANTIZE, v.to_c()  # type: ignore[union-attr]

        (qi, ci), (qw, cw), (qg, cg) = q(self.input), q(self.weight), q(self.gradient)
        return _native.LinearRecipe(qi, ci, qw, cw, qg, cg, int(self.occ), int(self.occ_per == "row"),
                                    int(self.compensate), float(self.alpha), int(self.dge), float(self.k), float(self.clamp),
                                    int(self.wgrad_hadamard), int(self.seed),
                                    *backward(self.backward_weight), *backward(self.backward_input))


RECIPE_KINDS = ["linear", "quartet"]
_RECIPE_CACHES = ("_valid", "_c")


class _RecipeC:
    """A linear recipe's C form, built once per Recipe object (its fields are frozen) and
    shared read-only by every call; plus what each call needs from it and the saved-state sizes
    per (tokens, in_features) the library computed for it."""

    __slots__ = ("struct", "ref", "grad_seed", "grad_stochastic", "sizes")

    def __init__(self, recipe: Recipe) -> None:
        self.struct = recipe.to_c()
        self.ref = ctypes.byref(self.struct)
        g = recipe.gradient
        self.grad_seed = int(g.seed) if g is not None else 0
        self.grad_stochastic = g is not None and g.rounding == "stochastic"
        self.sizes: Dict[Tuple[int, int], Tuple[int, int, int]] = {}

    def saved_sizes(self, tokens: int, in_features: int) -> Tuple[int, int, int]:
        key = (tokens, in_features)
        got = self.sizes.get(key)
        if got is None:
            lens = (ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64())
            _native.check(_native.lib.fp4swift_linear_saved_sizes(tokens, in_features, self.ref,
                                                                  *(ctypes.byref(v) for v in lens)))
            got = (lens[0].value, lens[1].value, lens[2].value)
            if len(self.sizes) >= 64:  # many shapes (e.g. varying sequence lengths): stay bounded
                self.sizes.clear()
            self.sizes[key] = got
        return got


def _recipe_c(recipe: Recipe) -> _RecipeC:
    c = recipe.__dict__.get("_c")
    if c is None:
        c = _RecipeC(recipe)
        object.__setattr__(recipe, "_c", c)
    return c


# dY in FP8: e5m2 with a per-tensor power-of-two scale (MS-AMP), RNE; NaN/inf propagate.
FP8_GRADIENT = QuantizerSpec.make("e5m2", "tensor", "pow2")

_E2M1_TOKEN = QuantizerSpec.make("e2m1", "row", "absmax", nonfinite="raise")
_E2M1_TENSOR = QuantizerSpec.make("e2m1", "tensor", "absmax", nonfinite="raise")

# OCP MXFP4: e2m1 elements, e8m0 (power-of-two, floor) scales on groups of 32 along K.
_MXFP4 = QuantizerSpec.make("e2m1", "block(32)", "e8m0", nonfinite="raise")
# NVFP4: e2m1 elements, two-level scales (per-tensor float32 S, per-block e4m3); 1x16 blocks
# for activations, 16x16 tiles for weights (the same tiles serve W and Wᵀ), RNE forward;
# dY stochastically rounded in 1x16 blocks before both backward GEMMs (NaN/inf propagate).
_NVFP4_X = QuantizerSpec.make("e2m1", "block(16)", "nvfp4", nonfinite="raise")
_NVFP4_W = QuantizerSpec.make("e2m1", "block2d(16)", "nvfp4", nonfinite="raise")
_NVFP4_DY = QuantizerSpec.make("e2m1", "block(16)", "nvfp4", "stochastic")

# FP8 GEMM operands (Zhou et al., spec §7): e4m3 with absmax scales on the groups a real FP8
# GEMM can apply: per row of X / W in the forward (tokens, output channels); per column of W in
# dX = dY·W and of X in dW = dYᵀ·X (their output dimension K); dY in e5m2 per tensor (pow2), the
# same quantized dY feeding both backward GEMMs.
_E4M3_ROW = QuantizerSpec.make("e4m3", "row", "absmax", nonfinite="raise")
_E4M3_COLUMN = QuantizerSpec.make("e4m3", "column", "absmax", nonfinite="raise")
# Zhou et al.'s FP4 forward: e2m1 with fine-grained absmax scales on 1x16 blocks along K.
_E2M1_BLOCK16 = QuantizerSpec.make("e2m1", "block(16)", "absmax", nonfinite="raise")
_FP8_BACKWARD = dict(gradient=FP8_GRADIENT, backward_weight=_E4M3_COLUMN, backward_input=_E4M3_COLUMN)

_RECIPES: Dict[str, Recipe] = {
    "fp32": Recipe("fp32", description="no quantization (the baseline)"),
    "fp4-direct": Recipe("fp4-direct", input=_E2M1_TENSOR, weight=_E2M1_TENSOR,
                         description="e2m1 absmax per-tensor on X and W, RNE, STE: the paper's direct cast"),
    "wang2025": Recipe("wang2025", input=_E2M1_TOKEN, weight=_E2M1_TOKEN, occ=True, alpha=0.99, occ_per="tensor",
                       compensate=True, dge=True, k=5.0, clamp=3.0,
                       description="Wang et al. 2025: e2m1 per-token X, per-channel W, OCC α=0.99 + compensation, DGE k=5"),
    "mxfp4": Recipe("mxfp4", input=_MXFP4, weight=_MXFP4,
                    description="OCP MXFP4: e2m1, e8m0 scales on 1x32 blocks along K for X and W, RNE, STE, "
                                "float32 gradients (K must be a multiple of 32)"),
    "nvfp4": Recipe("nvfp4", input=_NVFP4_X, weight=_NVFP4_W, gradient=_NVFP4_DY, wgrad_hadamard=16,
                    description="NVFP4: e2m1, two-level scales (tensor S + e4m3 per block), X in 1x16 blocks, W in "
                                "16x16 tiles, RNE forward, dY stochastic-rounded e2m1 1x16 blocks, STE "
                                "(K, N multiples of 16); the dW GEMM runs on dYᵀ and X_qᵀ rotated by a 16-point "
                                "random Hadamard transform along T (fixed signs from seed) and re-quantized in "
                                "1x16 blocks along T. The stochastic draws are fresh for every forward/backward "
                                "pair (seed mixed with a call counter; LinearSaved.gradient_seed)"),
    "quartet": Recipe("quartet", kind="quartet",
                      input=QuantizerSpec.make("e2m1", "block(32)", "quest", nonfinite="raise"),
                      weight=QuantizerSpec.make("e2m1", "block(32)", "quest", nonfinite="raise"),
                      gradient=QuantizerSpec.make("e2m1", "block(32)", "absmax_div3", "stochastic"),
                      description="Quartet (Castro et al. 2025): Hadamard-32 rotation along K, QuEST e2m1 groups of 32 "
                                  "on X·H and W·H; backward GEMMs on stochastic-rounded absmax_div3 e2m1 operands "
                                  "rotated by diag(d)·H with fresh signs per forward/backward pair, clip masks, "
                                  "un-rotation (K a multiple of 32; T and N zero-padded to multiples of 32)"),
    "fp8": Recipe("fp8", input=_E4M3_ROW, weight=_E4M3_ROW, **_FP8_BACKWARD,  # type: ignore[arg-type]
                  description="FP8 in all three GEMMs: e4m3 absmax X per token and W per output channel forward; "
                              "backward e4m3 W and X per input feature, dY e5m2 per-tensor pow2; STE"),
    "zhou2025": Recipe("zhou2025", input=_E2M1_BLOCK16, weight=_E2M1_BLOCK16, **_FP8_BACKWARD,  # type: ignore[arg-type]
                       roles=(("attention", "fp8"), ("lm_head", None), ("other", None)),
                       description="Zhou et al. 2025, module-wise: MLP linears forward in e2m1 with absmax 1x16 "
                                   "block scales (K a multiple of 16), attention projections in FP8 (recipe "
                                   "fp8), all backward GEMMs in FP8 (e4m3 W and X per input feature, "
                                   "dY e5m2 per-tensor pow2), STE; LM head and other linears float32. As a single "
                                   "layer's recipe it is the MLP one"),
}


def recipes() -> List[str]:
    """Names of the recipes this build implements."""
    return list(_RECIPES)


def register_recipe(recipe: Recipe) -> None:
    """Makes a custom recipe available by name to `Recipe.get` and `fp4swift.torch`."""
    recipe.validate()
    _RECIPES[recipe.name] = recipe


# ---------------------------------------------------------------------------------------
# The linear layer


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
                 w: np.ndarray, has_bias: bool) -> None:
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
        self.gradient_seed = _call_seed(rc.grad_seed, next(_CALLS)) if rc.grad_stochastic else rc.grad_seed
        codes_len, scales_len, cap = rc.saved_sizes(tokens, in_features)
        self.x_codes = np.empty(codes_len, dtype=np.uint8)
        self.x_scales = np.empty(scales_len, dtype=np.float32)
        self.residual_indptr = np.zeros(tokens + 1 if cap else 0, dtype=np.int64)
        self.residual_indices = np.empty(cap, dtype=np.int32)
        self.residual_values = np.empty(cap, dtype=np.float32)
        self.struct = _native.LinearSaved(
            cptr(self.x_codes, ctypes.c_uint8, _native.u8p), codes_len, fptr(self.x_scales), scales_len, 1.0,
            cptr(self.residual_indptr, ctypes.c_int64, _native.i64p) if cap else None,
            cptr(self.residual_indices, ctypes.c_int32, _native.i32p) if cap else None,
            fptr(self.residual_values) if cap else None, cap, 0)
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
        s.x_codes, s.x_scales = src.x_codes, src.x_scales
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
        return int(self.x_codes.nbytes + self.x_scales.nbytes + res)

    def release(self) -> None:
        """Frees the buffers; a later backward raises FP4StateError."""
        self.consumed = True
        self.x_codes = self.x_scales = self.residual_indices = self.residual_values = None  # type: ignore[assignment]
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

    def __init__(self, recipe: Recipe, x: np.ndarray, state: LinearSaved, operand: np.ndarray) -> None:
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
    state = LinearSaved(r, xa.shape, T, K, 0, None, False)  # type: ignore[arg-type]
    if r.saved_input is None:
        state.x = xa
    if r.input is None:
        op = xa
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
    status = _native.lib.fp4swift_linear_prepare_input(farg(xa), T, K, _recipe_c(r).ref,
                                                       farg(op) if r.input is not None else None,
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
            qs.x_mask.ctypes.data_as(_native.u8p), qs.x_mask.size))
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
    status = _native.lib.fp4swift_linear_forward_prepared(farg(p.operand), T, K, farg(wa), N,
                                                          farg(ba) if ba is not None else None, _recipe_c(r).ref, farg(y))
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
            fptr(dw) if dw is not None else None, fptr(db) if db is not None else None))
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
