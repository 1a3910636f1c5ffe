"""The FP4 linear layer as torch custom ops, so `torch.compile` (fullgraph=True included)
traces models with FP4Linear / FP4Conv1D layers without graph breaks.

    torch.ops.fp4swift.linear(x, weight, bias, recipe_key) -> (y, handle)
    torch.ops.fp4swift.linear_backward(dy, handle, x, weight, has_bias, compute_dx, compute_dw)
        -> (dx, dw, db)

Both run the same kernels as `FP4LinearFunction` (`linear.linear_forward` /
`linear.linear_backward`), so a compiled model computes the eager model's numbers bit for bit.
The ops take and return float32 (the layer converts other dtypes around them, as the eager
path does); `recipe_key` is the string `recipe_key(recipe)` gives each distinct Recipe, so the
graph holds a constant and dynamo guards on it (a `set_recipe` recompiles).

The saved state between forward and backward (X_q codes, scales, OCC residual: a
`linear.LinearSaved`) is not a tensor. The forward returns a `handle`: an int64 tensor of one
element whose storage owns that state, so the state lives exactly as long as autograd (or a
compiled graph) keeps the handle for the backward; the backward op finds the state by the
number the handle holds. A retained graph (`retain_graph=True`) can run the backward again.
What the state would otherwise reference in the caller's memory (a float32 X under recipes
that keep X unquantized, and W) is passed to the backward op as tensors that autograd saves,
since a compiled graph may reuse the memory of an intermediate once the op has returned.

Shared input quantization (q/k/v reading one activation, see `set_input_sharing`) is an eager
optimization: inside a compiled graph every layer quantizes its own input (the same numbers,
without the saving), because the cache keys on tensor objects that do not exist while tracing.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..linear import linear_backward, linear_forward
from ..recipe import Recipe

__all__ = ["recipe_key", "recipe_for_key", "fp4_linear"]

_KEYS: Dict[Any, str] = {}
_BY_KEY: Dict[str, Recipe] = {}


def recipe_key(recipe: Recipe) -> str:
    """The custom ops' name for a recipe: equal recipes share one key; the table keeps them."""
    try:
        k = _KEYS.get(recipe)
        lookup: Any = recipe
    except TypeError:  # an unhashable field value: key by object
        lookup = ("id", id(recipe))
        k = _KEYS.get(lookup)
    if k is None:
        k = f"{recipe.name}#{len(_BY_KEY)}"
        _KEYS[lookup] = k
        _BY_KEY[k] = recipe
    return k


def recipe_for_key(key: str) -> Recipe:
    r = _BY_KEY.get(key)
    if r is None:
        raise ValueError(f"unknown fp4swift recipe key {key!r} (keys come from fp4swift.torch.ops.recipe_key)")
    return r


def _keeps_float_x(recipe: Recipe) -> bool:
    """True when the recipe's backward reads the float32 X itself (not codes)."""
    return recipe.kind == "linear" and recipe.saved_input is None


# -- the saved state's lifetime: owned by the storage of the handle tensor

_STATES: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_NEXT = itertools.count(1)


class _Owner(bytearray):
    """The 8 bytes of a handle tensor; its `state` attribute keeps the saved state alive for as
    long as any tensor views these bytes (torch.from_numpy keeps the array, the array keeps
    this buffer)."""

    __slots__ = ("state",)


def _handle(state: Any) -> torch.Tensor:
    key = next(_NEXT)
    owner = _Owner(8)
    owner.state = state
    arr = np.frombuffer(owner, dtype=np.int64)
    arr[0] = key
    _STATES[key] = state
    return torch.from_numpy(arr)


def _state(handle: torch.Tensor) -> Any:
    s = _STATES.get(int(handle.reshape(-1)[0]))
    if s is None:
        from .._native import FP4StateError

        raise FP4StateError("the FP4 layer's saved state is gone (its forward's graph was freed)")
    return s


def _f32(t: Optional[torch.Tensor], name: str) -> Optional[np.ndarray]:
    from . import _as_numpy_f32

    return _as_numpy_f32(t, name)


@torch.library.custom_op("fp4swift::linear", mutates_args=())
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            recipe: str) -> Tuple[torch.Tensor, torch.Tensor]:
    r = recipe_for_key(recipe)
    y, saved = linear_forward(_f32(x, "input"), _f32(weight, "weight"), _f32(bias, "bias"), r)
    return torch.from_numpy(y), _handle(saved)


@_linear.register_fake
def _linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 recipe: str) -> Tuple[torch.Tensor, torch.Tensor]:
    torch._check(x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1],
                 lambda: f"fp4swift::linear: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit")
    y = x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float32)
    return y, x.new_empty((1,), dtype=torch.int64)


@torch.library.custom_op("fp4swift::linear_backward", mutates_args=())
def _linear_backward(dy: torch.Tensor, handle: torch.Tensor, x: Optional[torch.Tensor], weight: torch.Tensor,
                     has_bias: bool, compute_dx: bool, compute_dw: bool
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    saved = _state(handle)
    # The caller's memory the state refers to, as autograd kept it (see the module docstring).
    saved.w = _f32(weight, "weight")
    if x is not None and saved.x is not None:
        saved.x = _f32(x, "input")
    dx, dw, db = linear_backward(_f32(dy, "grad_output"), saved, retain=True, compute_dx=compute_dx,
                                 compute_dw=compute_dw)
    empty = torch.empty(0, dtype=torch.float32)
    return (torch.from_numpy(dx) if dx is not None else empty,
            torch.from_numpy(dw) if dw is not None else empty.clone(),
            torch.from_numpy(db) if db is not None else empty.clone())


@_linear_backward.register_fake
def _linear_backward_fake(dy: torch.Tensor, handle: torch.Tensor, x: Optional[torch.Tensor], weight: torch.Tensor,
                          has_bias: bool, compute_dx: bool, compute_dw: bool
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = weight.shape
    f32 = torch.float32
    dx = dy.new_empty((*dy.shape[:-1], k), dtype=f32) if compute_dx else dy.new_empty((0,), dtype=f32)
    dw = dy.new_empty((n, k), dtype=f32) if compute_dw else dy.new_empty((0,), dtype=f32)
    db = dy.new_empty((n,), dtype=f32) if has_bias else dy.new_empty((0,), dtype=f32)
    return dx, dw, db


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, torch.Tensor]) -> None:
    x, weight, bias, key = inputs
    keep_x = _keeps_float_x(recipe_for_key(key))
    ctx.save_for_backward(output[1], weight, x if keep_x else None)
    ctx.has_bias = bias is not None
    ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)


def _backward(ctx: Any, dy: torch.Tensor, dhandle: Any) -> Tuple[Optional[torch.Tensor], ...]:
    handle, weight, x = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx, dw, db = torch.ops.fp4swift.linear_backward(dy, handle, x, weight, ctx.has_bias, bool(need_x),
                                                    bool(need_w))
    x_dtype, w_dtype, b_dtype = ctx.dtypes
    return (dx.to(x_dtype) if need_x else None, dw.to(w_dtype) if need_w else None,
            db.to(b_dtype) if need_b and ctx.has_bias else None, None)


_linear.register_autograd(_backward, setup_context=_setup_context)


def fp4_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], key: str) -> torch.Tensor:
    """y = x·Wᵀ + b through the custom op (in x's dtype), the layer's compiled path."""
    y = torch.ops.fp4swift.linear(x, weight, bias, key)[0]
    return y if x.dtype == torch.float32 else y.to(x.dtype)
