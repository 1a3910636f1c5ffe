"""PyTorch integration: FP4 linear layers backed by the Swift kernels (CPU).

    import fp4swift.torch as f4t
    f4t.convert_(model, recipe="wang2025")            # swaps nn.Linear per the recipe's policy, in place
    fp4 = f4t.convert(model, "wang2025", inplace=False)  # ... or in a converted copy
    layer = f4t.FP4Linear(512, 2048, recipe="wang2025")
    schedule = f4t.PrecisionSchedule(model, total_steps=1000, switch_at=0.9, target="fp8")

Tensors cross to the kernels without copies when they are contiguous float32 CPU tensors;
float64 and bfloat16 tensors are computed in float32 and returned in their own dtype.
"""
from __future__ import annotations

import fnmatch
import math
import threading
import weakref
from typing import Any, Iterable, List, Optional, Tuple, Union

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("fp4swift.torch needs PyTorch: pip install -e .[torch]") from e

from ..linear import LinearSaved, PreparedInput, linear_backward, linear_forward, prepare_input
from ..recipe import Recipe
from ..roles import LM_HEAD_NAMES, module_role

__all__ = ["FP4Conv1D", "FP4Linear", "FP4LinearFunction", "PrecisionSchedule", "convert", "convert_", "lm_head_names",
           "linear_layers", "module_roles", "set_input_sharing"]

RecipeLike = Union[str, Recipe]


def _recipe(recipe: RecipeLike) -> Recipe:
    if isinstance(recipe, Recipe):
        recipe.validate()
        return recipe
    if isinstance(recipe, str):
        return Recipe.get(recipe)
    raise TypeError(f"recipe must be a name or an fp4swift.Recipe, got {type(recipe).__name__}")


def _as_numpy_f32(t: Optional[torch.Tensor], name: str) -> Optional[np.ndarray]:
    """A float32 numpy view of a CPU tensor (zero-copy when it already is contiguous float32)."""
    if t is None:
        return None
    # Fast path (every call of the layer): a contiguous float32 CPU tensor, viewed as is.
    if t.dtype is torch.float32 and t.is_cpu and t.is_contiguous():
        return (t.detach() if t.requires_grad else t).numpy()
    if t.device.type != "cpu":
        raise TypeError(f"{name} is on {t.device}; fp4swift's kernels run on the CPU: move the model and data with .cpu()")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous().numpy()


class _SharedInput(threading.local):
    """The last input a layer prepared (see fp4swift.PreparedInput), for the next layer that
    reads the same tensor under the same recipe: q/k/v projections, gate/up. One slot per
    thread. Only activations inside the autograd graph (x.grad_fn set) are shared, and an
    entry is valid while it is the same tensor object (a weak reference, so the cache never
    keeps a tensor alive) at the same version and address: an in-place change through the
    tensor invalidates it. A write that bypasses the version counter (through x.data or a
    numpy view), which autograd cannot see either, would not be seen."""

    enabled = True

    def __init__(self) -> None:
        self.ref: Any = None
        self.version = -1
        self.address = 0
        self.prepared: Optional[PreparedInput] = None

    def get(self, x: torch.Tensor, recipe: Recipe) -> PreparedInput:
        p = self.prepared
        if p is not None and self.ref() is x and self.version == x._version and self.address == x.data_ptr() \
                and (p.recipe is recipe or p.recipe == recipe):
            return p
        xa = _as_numpy_f32(x, "input")
        # The previous operand buffer is reused when the shape fits (its layers' GEMMs are done).
        old = p.operand if p is not None and p.operand is not p.x else None
        reuse = old if old is not None and old.size == xa.size and not np.shares_memory(old, xa) else None
        p = prepare_input(xa, recipe, operand=reuse)
        self.ref, self.version, self.address, self.prepared = weakref.ref(x), x._version, x.data_ptr(), p
        return p

    def clear(self) -> None:
        self.ref, self.version, self.address, self.prepared = None, -1, 0, None


_shared_input = _SharedInput()


def set_input_sharing(enabled: bool) -> bool:
    """Turns on/off (default on) the sharing of one input's quantization between consecutive
    layers that read the same activation under the same recipe (q/k/v, gate/up): results are
    the same bit for bit either way; sharing skips repeated OCC and quantization passes, and
    the layers' saved states share their codes. Only tensors produced inside the autograd
    graph are shared (see _SharedInput for what invalidates an entry). Returns the previous
    setting."""
    previous = _SharedInput.enabled
    _SharedInput.enabled = bool(enabled)
    if not enabled:
        _shared_input.clear()
    return previous


class FP4LinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b under a recipe; backward through the Swift kernels (numerics.md §6)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],  # type: ignore[override]
                recipe: Recipe) -> torch.Tensor:
        wa = _as_numpy_f32(weight, "weight")
        ba = _as_numpy_f32(bias, "bias")
        if _SharedInput.enabled and x.grad_fn is not None and recipe.kind == "linear":
            y, saved = linear_forward(None, wa, ba, recipe, prepared=_shared_input.get(x, recipe))
        else:
            y, saved = linear_forward(_as_numpy_f32(x, "input"), wa, ba, recipe)
        ctx.fp4_saved = saved
        ctx.save_for_backward(weight)  # so torch notices an in-place update before backward
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        out = torch.from_numpy(y)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        ctx.saved_tensors  # raises if the weight was modified in place since forward
        saved: LinearSaved = ctx.fp4_saved
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # retain=True: the graph may be walked again (retain_graph); the state goes with ctx.
        dx, dw, db = linear_backward(_as_numpy_f32(dy, "grad_output"), saved, retain=True,
                                     compute_dx=need_x, compute_dw=need_w)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        return _back(dx, need_x, x_dtype), _back(dw, need_w, w_dtype), _back(db, need_b, b_dtype), None


def _back(a: Optional[np.ndarray], need: bool, dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    """A gradient as a tensor of its input's dtype (None when not needed)."""
    if a is None or not need:
        return None
    t = torch.from_numpy(a)
    return t if dtype == torch.float32 else t.to(dtype)


class _HasRecipe:
    """The `recipe` attribute of the converted layers: setting it (a name or a Recipe) validates
    it and records the custom ops' key of it (`ops.recipe_key`), which the compiled path reads."""

    @property
    def recipe(self) -> Recipe:
        d = self.__dict__
        if "_fp4_recipe" not in d and "recipe" in d:  # a layer pickled before this property existed
            self.recipe = d.pop("recipe")
        return d["_fp4_recipe"]

    @recipe.setter
    def recipe(self, value: RecipeLike) -> None:
        r = _recipe(value)
        self.__dict__["_fp4_recipe"] = r
        self.__dict__["_fp4_key"] = recipe_key(r)

    def _fp4(self, input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # torch.compile: the custom op (no graph break; no shared input quantization)
            return fp4_linear(input, weight, self.bias, self._fp4_key)  # type: ignore[attr-defined]
        return FP4LinearFunction.apply(input, weight, self.bias, self.recipe)  # type: ignore[attr-defined]


class FP4Linear(_HasRecipe, nn.Linear):
    """nn.Linear computed by fp4swift under a recipe. Its parameters and state_dict are
    nn.Linear's (weight [out, in], bias [out]), so checkpoints load either way.

    Eager calls go through `FP4LinearFunction` (with shared input quantization); under
    `torch.compile` the layer calls the custom op `torch.ops.fp4swift.linear` (see
    fp4swift.torch.ops), which the compiler traces without a graph break. Both give the same
    numbers bit for bit."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, recipe: RecipeLike = "wang2025",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = _recipe(recipe)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: RecipeLike = "wang2025") -> "FP4Linear":
        """An FP4Linear sharing `linear`'s parameter objects (optimizer state stays valid)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.recipe = _recipe(recipe)
        new.train(linear.training)
        return new

    def set_recipe(self, recipe: RecipeLike) -> None:
        """Switches the precision recipe (e.g. for a target-precision schedule)."""
        self.recipe = _recipe(recipe)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._fp4(input, self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"


def _is_conv1d(m: nn.Module) -> bool:
    """Hugging Face's GPT-2 `Conv1D`: a linear layer with weight [in, out] (y = x·W + b)."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None \
        and m.weight.dim() == 2


class FP4Conv1D(_HasRecipe, nn.Module):
    """Hugging Face's `Conv1D` (GPT-2's weight [in, out] layout) computed by fp4swift under a
    recipe: y = x·W + b = x·(Wᵀ)ᵀ + b, the same layer as FP4Linear on the transposed weight.
    It shares the original module's parameter objects."""

    def __init__(self, conv: nn.Module, recipe: RecipeLike = "wang2025") -> None:
        super().__init__()
        self.nf = conv.nf
        self.weight = conv.weight
        self.bias = conv.bias
        self.recipe = _recipe(recipe)
        self.train(conv.training)

    def set_recipe(self, recipe: RecipeLike) -> None:
        """Switches the precision recipe (e.g. for a target-precision schedule)."""
        self.recipe = _recipe(recipe)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._fp4(input, self.weight.t())

    def extra_repr(self) -> str:
        return f"nx={self.weight.shape[0]}, nf={self.nf}, recipe={self.recipe.name}"


#: Module names treated as the language-model head (kept in float32 by default).
lm_head_names = LM_HEAD_NAMES


def linear_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(qualified name, module) of every linear layer in the model: nn.Linear (FP4Linear
    included), Hugging Face Conv1D and FP4Conv1D."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, FP4Conv1D)) or _is_conv1d(m)]


def module_roles(model: nn.Module) -> List[Tuple[str, str]]:
    """(qualified name, role) of every linear layer (roles: fp4swift.ROLES). A layer whose
    weight is tied to an nn.Embedding counts as the LM head whatever its name."""
    return [(name, "lm_head" if _tied_to_embedding(model, m) else module_role(name))
            for name, m in linear_layers(model)]


def _tied_to_embedding(model: nn.Module, linear: nn.Linear) -> bool:
    for m in model.modules():
        if isinstance(m, nn.Embedding) and (m.weight is linear.weight or m.weight.data_ptr() == linear.weight.data_ptr()):
            return True
    return False


def _as_float_module(module: nn.Module) -> nn.Module:
    """The plain torch module behind a converted layer (same parameter objects)."""
    if isinstance(module, FP4Conv1D):
        from transformers.pytorch_utils import Conv1D  # a converted Conv1D came from transformers

        plain = Conv1D.__new__(Conv1D)
        nn.Module.__init__(plain)
        plain.nf, plain.weight, plain.bias = module.nf, module.weight, module.bias
    else:
        plain = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(plain)
        plain.in_features, plain.out_features = module.in_features, module.out_features
        plain.weight, plain.bias = module.weight, module.bias
    plain.train(module.training)
    return plain


def convert_(model: nn.Module, recipe: RecipeLike = "wang2025", skip: Optional[Iterable[str]] = None) -> nn.Module:
    """Swaps the model's linear layers for fp4swift ones **in place** per the recipe's module
    policy, and returns the same model (the trailing underscore marks the in-place form, as
    torchao's `quantize_(model, config)` and torch's `Tensor.add_`).

    Each nn.Linear (or Hugging Face GPT-2 Conv1D) gets the recipe `recipe.for_role(role)` of
    its role (`module_roles`: attention, mlp, lm_head, other; a layer tied to an nn.Embedding
    is the LM head). Most recipes cover every role but the LM head; zhou2025 gives attention
    projections the fp8 recipe, MLP linears its FP4 one and leaves the rest float32.
    Embeddings and norms are untouched. `skip` adds fnmatch patterns of qualified module names
    to leave alone. Layers already converted get their new recipe, or turn back into plain
    torch modules where the policy says float32. Parameters are shared, not copied, so an
    optimizer built on the model before stays valid.
    """
    r = _recipe(recipe)
    patterns = list(skip or [])
    for name, role in module_roles(model):
        if name == "":
            raise ValueError("convert() needs a model that contains linear layers, not a linear layer itself; "
                             "use FP4Linear.from_linear(layer, recipe)")
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        module = model.get_submodule(name)
        target = r.for_role(role)
        converted = isinstance(module, (FP4Linear, FP4Conv1D))
        if target is None and not converted:
            continue
        if converted and target is not None:
            module.set_recipe(target)
            continue
        if target is None:
            new: nn.Module = _as_float_module(module)
        elif isinstance(module, nn.Linear):
            new = FP4Linear.from_linear(module, target)
        else:
            new = FP4Conv1D(module, target)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], new)
    return model


def convert(model: nn.Module, recipe: RecipeLike = "wang2025", skip: Optional[Iterable[str]] = None,
            inplace: Optional[bool] = None) -> nn.Module:
    """The model with its linear layers swapped for fp4swift ones per the recipe's module policy
    (see `convert_` for the policy and `skip`).

    inplace=False: converts and returns a deep copy; `model` is left as it was (the convention
    of `torch.ao.quantization.convert`), so ``fp4 = convert(fp32_model, "wang2025",
    inplace=False)`` keeps both. inplace=True: converts `model` itself and returns it (the same
    as `convert_(model, recipe)`).

    Not given (the old call ``convert(model, recipe)``): converts in place, as earlier versions
    did, and emits a FutureWarning, because ``fp4 = convert(fp32_model)`` looks like it copies
    but also converts the fp32 model. A future version will copy by default; say which you mean
    with `inplace=` or call `convert_`.
    """
    if inplace is None:
        import warnings

        warnings.warn("fp4swift.torch.convert(model, recipe) converts the model in place and returns it; a future "
                      "version will return a converted copy. Use convert_(model, recipe) to convert in place or "
                      "convert(model, recipe, inplace=False) for a copy.", FutureWarning, stacklevel=2)
        inplace = True
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    if not inplace:
        import copy

        _recipe(recipe)  # a bad recipe fails before the copy is made
        model = copy.deepcopy(model)
    return convert_(model, recipe, skip)


class PrecisionSchedule:
    """Target-precision training schedule (Zhou et al., numerics.md §7): the converted layers train
    under their recipes until step `switch_step`, then every one switches to `target` (default
    "fp8"; "fp32", or any recipe) for the rest of training.

    switch_step = round(switch_at · total_steps); the default switch_at = 0.9 runs the last
    10% of the steps in the target precision. Call `step(i)` before optimizer step i
    (0-based); it returns True on the call that switched. It is a pure function of the step,
    so a resumed run switches the same way.
    """

    def __init__(self, model: nn.Module, total_steps: int, switch_at: float = 0.9,
                 target: RecipeLike = "fp8") -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if isinstance(switch_at, bool) or not isinstance(switch_at, (int, float)) or not 0 <= switch_at <= 1 \
                or not math.isfinite(switch_at):
            raise ValueError(f"switch_at must be a fraction of training in [0, 1], got {switch_at!r}")
        self.model = model
        self.target = _recipe(target)
        self.total_steps = total_steps
        self.switch_at = float(switch_at)
        self.switch_step = int(round(switch_at * total_steps))
        self.layers = [m for _, m in linear_layers(model) if isinstance(m, (FP4Linear, FP4Conv1D))]
        if not self.layers:
            raise ValueError("the model has no converted layers to switch: call fp4swift.torch.convert_ first")
        self.switched = False

    def step(self, step: int) -> bool:
        """Switches every converted layer to the target precision when `step` reaches
        switch_step (once); True on that call."""
        if self.switched or step < self.switch_step:
            return False
        for m in self.layers:
            m.set_recipe(self.target)
        self.switched = True
        return True


from .ops import fp4_linear, recipe_key  # noqa: E402  (ops uses the helpers above)
