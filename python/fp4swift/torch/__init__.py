"""PyTorch integration: FP4 linear layers backed by the Swift kernels (CPU).

    import fp4swift.torch as f4t
    model = f4t.convert(model, recipe="wang2025")     # swaps nn.Linear per the recipe's policy
    layer = f4t.FP4Linear(512, 2048, recipe="wang2025")

Tensors cross to the kernels without copies when they are contiguous float32 CPU tensors;
float64 and bfloat16 tensors are computed in float32 and returned in their own dtype.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable, List, Optional, Tuple, Union

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("fp4swift.torch needs PyTorch: pip install -e .[torch]") from e

from ..linear import LinearSaved, Recipe, linear_backward, linear_forward

__all__ = ["FP4Linear", "FP4LinearFunction", "convert", "lm_head_names", "linear_layers"]

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
    if t.device.type != "cpu":
        raise TypeError(f"{name} is on {t.device}; fp4swift's kernels run on the CPU: move the model and data with .cpu()")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous().numpy()


class FP4LinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b under a recipe; backward through the Swift kernels (spec §6)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],  # type: ignore[override]
                recipe: Recipe) -> torch.Tensor:
        xa = _as_numpy_f32(x, "input")
        wa = _as_numpy_f32(weight, "weight")
        ba = _as_numpy_f32(bias, "bias")
        y, saved = linear_forward(xa, wa, ba, recipe)
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

        def back(a: Optional[np.ndarray], need: bool, dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
            if a is None or not need:
                return None
            t = torch.from_numpy(a)
            return t if dtype == torch.float32 else t.to(dtype)

        return back(dx, need_x, x_dtype), back(dw, need_w, w_dtype), back(db, need_b, b_dtype), None


class FP4Linear(nn.Linear):
    """nn.Linear computed by fp4swift under a recipe. Its parameters and state_dict are
    nn.Linear's (weight [out, in], bias [out]), so checkpoints load either way."""

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
        return FP4LinearFunction.apply(input, self.weight, self.bias, self.recipe)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"


#: Module names treated as the language-model head (kept in float32 by default).
lm_head_names = ("lm_head", "head", "output", "embed_out")


def linear_layers(model: nn.Module) -> List[Tuple[str, nn.Linear]]:
    """(qualified name, module) of every nn.Linear in the model, FP4Linear included."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _tied_to_embedding(model: nn.Module, linear: nn.Linear) -> bool:
    for m in model.modules():
        if isinstance(m, nn.Embedding) and (m.weight is linear.weight or m.weight.data_ptr() == linear.weight.data_ptr()):
            return True
    return False


def convert(model: nn.Module, recipe: RecipeLike = "wang2025", skip: Optional[Iterable[str]] = None) -> nn.Module:
    """Swaps the model's nn.Linear modules for FP4Linear (in place) and returns the model.

    Policy: every nn.Linear except the language-model head (a module whose last name is one
    of `lm_head_names`, or whose weight is tied to an nn.Embedding); embeddings and norms
    are untouched. `skip` adds fnmatch patterns of qualified module names to leave alone.
    Layers already converted get the new recipe. Parameters are shared, not copied.
    """
    r = _recipe(recipe)
    patterns = list(skip or [])
    for name, module in linear_layers(model):
        short = name.rsplit(".", 1)[-1]
        if short in lm_head_names or _tied_to_embedding(model, module):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if isinstance(module, FP4Linear):
            module.set_recipe(r)
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if name == "":
            raise ValueError("convert() needs a model that contains nn.Linear modules, not an nn.Linear itself; "
                             "use FP4Linear.from_linear(layer, recipe)")
        setattr(parent, short, FP4Linear.from_linear(module, r))
    return model
