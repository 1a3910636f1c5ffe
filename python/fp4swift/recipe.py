"""Precision recipes of the linear layer as data (numerics.md §6, §7): the Recipe dataclass,
its C form, and the named recipes of `recipes()`."""
from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _native
from ._arrays import check_choice, check_positive
from .outliers import OCC_GROUPS, check_alpha
from .quantization import SCALE_RULES, QuantizerSpec
from .recipe_values import check_field_types, coerce_changes
from .roles import ROLES


@dataclass(frozen=True)
class Recipe:
    """A linear layer's precision recipe as data (numerics.md §6).

    input / weight / gradient: the quantizer of X, W and dY (None = float32). The gradient
    quantizer, when set, is applied to dY before both backward GEMMs.
    occ, alpha, occ_per, compensate: outlier clamping of X and its sparse compensation.
    dge, k, clamp: DGE in the weight gradient (off = straight-through estimator).
    kind: "linear" (the layer of `fp4swift.linear`) or "quartet" (the Quartet layer of numerics.md §6, with its own
    kernels: Hadamard rotations, QuEST forward, stochastic absmax_div3 backward; there the
    quantizer fields only describe it). seed: the randomness of the recipe's rotations (quartet
    backward signs; the fixed signs of wgrad_hadamard).
    wgrad_hadamard: 0, or the block b of a random Hadamard transform of the weight-gradient GEMM's
    operands along T (NVFP4): dW = Q_gradient(dYᵀ·H_b)·Q_input(X_qᵀ·H_b)ᵀ, H_b = diag(d)·H_b,
    T zero-padded to a multiple of b.
    backward_weight / backward_input: W in the input-gradient GEMM (dX = dY·W_b) and X in the
    weight-gradient GEMM (dW = dYᵀ·X_b): "forward" (the forward's W_q / X_q, the default), None
    (float32) or their own QuantizerSpec (e.g. FP8 backward GEMMs under an FP4 forward, numerics.md §7).
    The forward saves the codes of X_b.
    backward_grouping: how the backward quantizers group their operands: "stored" (default: as
    stored, dY [T, N], W [N, K], the saved X [T, K]) or "reduction" (along each backward GEMM's
    reduction dimension, as OCP MX training does: dY and W along N for dX; dYᵀ and X_bᵀ along T
    for dW, X_b decoded from the saved codes and T zero-padded; numerics.md §6).
    gemm: where the GEMMs run (numerics.md §11): "packed" (default: every GEMM whose two
    operands are FP4 codes with scales constant along its reduction dimension runs on the codes
    with integer SIMD, the others as below) or "simulated" (sgemm on the fake-quantized float32
    operands). Both compute the same quantized operands; they differ by float32 rounding.
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
    gemm: str = "packed"
    backward_grouping: str = "stored"

    @staticmethod
    def get(name: str) -> "Recipe":
        """A built-in recipe by name (see `recipes()`), or a recipe spec: a name with overrides of
        its fields and `replace` shortcuts, `"mxfp4:scale_rule=e8m0_rceil"`,
        `"nvfp4:scale_rule=nvfp4_torchao:stochastic_bits=8"`, `"wang2025:dge=off:alpha=0.97"`
        (values: on/off/true/false, numbers, or names)."""
        if isinstance(name, Recipe):
            return name
        if isinstance(name, str) and ":" in name:
            base, *mods = name.split(":")
            changes: Dict[str, Any] = {}
            for m in mods:
                key, eq, val = m.partition("=")
                if not eq or not key.strip():
                    raise ValueError(f"recipe spec {name!r}: overrides look like name:field=value, got {m!r}")
                if key.strip() in changes:
                    raise ValueError(f"recipe spec {name!r}: {key.strip()} is given twice")
                changes[key.strip()] = _spec_value(val)
            try:
                return Recipe.get(base.strip()).replace(**changes)
            except TypeError as e:
                raise ValueError(f"recipe spec {name!r}: {e}") from None
        check_choice(name, list(_RECIPES), "recipe")
        return _RECIPES[name]

    def replace(self, **changes: Any) -> "Recipe":
        """A modified copy. Besides the fields, accepts shortcuts applied to both X and W:
        `fmt=`, `granularity=` (e.g. 'tensor' for tensor-wise scaling), and
        `grad_fp8=True` (dY cast to e5m2 with a per-tensor pow2 scale, as the paper's framework).
        Two more shortcuts apply to every quantizer of the recipe (X, W, dY and own backward
        operands): `scale_rule=` (e.g. 'e8m0_rceil' for mxfp4, 'nvfp4_torchao' for nvfp4) and
        `stochastic_bits=r` (the quantizers with stochastic rounding; numerics.md §1).
        Quantizer fields take a QuantizerSpec, a format name, 'FMT/GRANULARITY[/RULE[/ROUNDING]]'
        or none; switches (occ, compensate, dge) a bool (see fp4swift.recipe_values)."""
        changes = coerce_changes(self, changes)
        fmt = changes.pop("fmt", None)
        gran = changes.pop("granularity", None)
        grad_fp8 = changes.pop("grad_fp8", None)
        rule = changes.pop("scale_rule", None)
        bits = changes.pop("stochastic_bits", None)
        if self.kind == "quartet" and (fmt is not None or gran is not None or grad_fp8 is not None or rule is not None
                                       or bits is not None):
            raise ValueError("the quartet recipe's formats, groups, scale rules and rounding are fixed (numerics.md §6); "
                             "fmt=, granularity=, grad_fp8=, scale_rule= and stochastic_bits= do not apply")
        r = dataclasses.replace(self, **changes)
        for attr in ("input", "weight"):
            q = getattr(r, attr)
            if q is not None and (fmt is not None or gran is not None):
                q = QuantizerSpec.make(fmt or q.fmt, gran or q.granularity_label, q.scale_rule, q.rounding,
                                       None, q.seed, q.nonfinite, q.stochastic_bits)
                r = dataclasses.replace(r, **{attr: q})
        if grad_fp8 is not None:
            r = dataclasses.replace(r, gradient=FP8_GRADIENT if grad_fp8 else None)
        if rule is not None or bits is not None:
            r = _replace_quantizers(r, rule, bits)
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
        check_choice(self.gemm, list(GEMM_MODES), "gemm mode")
        check_choice(self.backward_grouping, list(BACKWARD_GROUPINGS), "backward grouping")
        check_field_types(self)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= int(self.seed) < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {self.seed!r}")
        if self.kind == "quartet":
            if self.occ or self.dge:
                raise ValueError("the quartet recipe has no OCC or DGE")
            return
        check_alpha(self.alpha)
        check_choice(self.occ_per, OCC_GROUPS, "OCC group")
        check_positive("k", self.k)
        check_positive("clamp", self.clamp)
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
        sizes = (ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64())
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
                                    *backward(self.backward_weight), *backward(self.backward_input),
                                    GEMM_MODES[self.gemm], BACKWARD_GROUPINGS[self.backward_grouping])


def _spec_value(v: str) -> Any:
    """A recipe-spec value: on/true/yes and off/false/no as bools, then int, float, else the text."""
    low = v.strip().lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v.strip()


def _replace_quantizers(r: "Recipe", rule: Any, bits: Any) -> "Recipe":
    """`r` with every quantizer's scale rule set to `rule` and, for the stochastic ones, its
    stochastic_bits to `bits` (None: unchanged)."""
    if rule is not None:
        check_choice(rule, SCALE_RULES, "scale rule")
    fields = ("input", "weight", "gradient", "backward_weight", "backward_input")
    specs = {f: getattr(r, f) for f in fields if isinstance(getattr(r, f), QuantizerSpec)}
    if not specs:
        raise ValueError(f"recipe {r.name!r} quantizes nothing: scale_rule= and stochastic_bits= do not apply")
    if bits is not None and not any(q.rounding == "stochastic" for q in specs.values()):
        raise ValueError(f"stochastic_bits={bits!r}: no quantizer of recipe {r.name!r} rounds stochastically")
    out = {}
    for f, q in specs.items():
        b = q.stochastic_bits if bits is None or q.rounding != "stochastic" else bits
        out[f] = QuantizerSpec.make(q.fmt, q.granularity_label, rule or q.scale_rule, q.rounding, None, q.seed,
                                    q.nonfinite, b)
    return dataclasses.replace(r, **out)


RECIPE_KINDS = ["linear", "quartet"]
#: Recipe.backward_grouping values and their C constants.
BACKWARD_GROUPINGS = {"stored": _native.BACKWARD_GROUPING_STORED, "reduction": _native.BACKWARD_GROUPING_REDUCTION}
#: Recipe.gemm values and their C constants.
GEMM_MODES = {"packed": _native.GEMM_PACKED, "simulated": _native.GEMM_SIMULATED}


def gemm_mode(recipe: Recipe) -> int:
    """The C constant of a recipe's `gemm` field."""
    return GEMM_MODES[recipe.gemm]
_RECIPE_CACHES = ("_valid", "_c")


class _RecipeC:
    """A linear recipe's C form, built once per Recipe object (its fields are frozen) and
    shared read-only by every call; plus what each call needs from it and the saved-state sizes
    per (tokens, in_features) the library computed for it."""

    __slots__ = ("struct", "ref", "grad_seed", "grad_stochastic", "sizes", "on_codes")

    def __init__(self, recipe: Recipe) -> None:
        self.struct = recipe.to_c()
        self.ref = ctypes.byref(self.struct)
        g = recipe.gradient
        self.grad_seed = int(g.seed) if g is not None else 0
        self.grad_stochastic = g is not None and g.rounding == "stochastic"
        self.sizes: Dict[Tuple[int, int], Tuple[int, int, int, int]] = {}
        self.on_codes: Dict[int, bool] = {}

    def forward_on_codes(self, in_features: int) -> bool:
        """Whether the forward GEMM runs on the saved state's packed codes (then it needs no X
        operand buffer). False under recipes whose saved X is their own (zhou2025): their forward
        may still run on codes, carried in the operand buffer (numerics.md §6)."""
        got = self.on_codes.get(in_features)
        if got is None:
            flag = ctypes.c_int32()
            _native.check(_native.lib.fp4swift_linear_forward_on_codes(in_features, self.ref, ctypes.byref(flag)))
            got = self.on_codes[in_features] = bool(flag.value)
        return got

    def saved_sizes(self, tokens: int, in_features: int) -> Tuple[int, int, int, int]:
        """(code bytes, float scales, residual capacity, scale bytes) of the saved state."""
        key = (tokens, in_features)
        got = self.sizes.get(key)
        if got is None:
            lens = (ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64())
            _native.check(_native.lib.fp4swift_linear_saved_sizes(tokens, in_features, self.ref,
                                                                  *(ctypes.byref(v) for v in lens)))
            got = (lens[0].value, lens[1].value, lens[2].value, lens[3].value)
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
# dY in MXFP4 for both backward GEMMs (NaN/inf propagate), each time grouped along the GEMM's reduction.
_MXFP4_DY = QuantizerSpec.make("e2m1", "block(32)", "e8m0")
# NVFP4: e2m1 elements, two-level scales (per-tensor float32 S, per-block e4m3); 1x16 blocks
# for activations, 16x16 tiles for weights (the same tiles serve W and Wᵀ), RNE forward;
# dY stochastically rounded in 1x16 blocks before both backward GEMMs (NaN/inf propagate).
_NVFP4_X = QuantizerSpec.make("e2m1", "block(16)", "nvfp4", nonfinite="raise")
_NVFP4_W = QuantizerSpec.make("e2m1", "block2d(16)", "nvfp4", nonfinite="raise")
_NVFP4_DY = QuantizerSpec.make("e2m1", "block(16)", "nvfp4", "stochastic")

# FP8 GEMM operands (Zhou et al., numerics.md §7): e4m3 with absmax scales on the groups a real FP8
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
    "mxfp4": Recipe("mxfp4", input=_MXFP4, weight=_MXFP4, gradient=_MXFP4_DY, backward_grouping="reduction",
                    description="OCP MXFP4 in all three GEMMs: e2m1 with e8m0 scales on 1x32 blocks along each "
                                "GEMM's reduction dimension, RNE, STE: forward X and W along K; dX = Q(dY)·Q(Wᵀ)ᵀ "
                                "along N; dW = Q(dYᵀ)·Q(X_qᵀ)ᵀ along T (X_q decoded from the saved codes, T "
                                "zero-padded to a multiple of 32). K and N must be multiples of 32. "
                                "mxfp4:gradient=none:backward_grouping=stored is the forward-only variant (float32 dY, the forward W_q and X_q in the backward GEMMs)"),
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
