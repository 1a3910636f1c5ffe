"""Recipe specs of `fp4swift train --recipes`: a recipe name with ablation overrides of its
fields and a target-precision schedule (`wang2025:dge=off`, `zhou2025:switch_at=0.9`), resolved
to fp4swift.Recipe objects, and the model copy a recipe trains."""
from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from ..recipe import _spec_value  # one parser of spec values: on/off, numbers, text
from .config import RunError, TrainConfig


def available_recipes() -> List[str]:
    import fp4swift as f4

    names = list(f4.recipes())
    return names if "fp32" in names else ["fp32"] + names


#: Recipe-spec keys of the target-precision schedule (not Recipe fields).
SCHEDULE_KEYS = ("switch_at", "switch_to")


def _split_schedule(spec: str) -> Tuple[str, Dict[str, str]]:
    """(the spec without its schedule keys, {key: value} of those keys)."""
    name, *mods = spec.split(":")
    keep, sched = [name], {}
    seen = set()
    for m in mods:
        key, eq, val = m.partition("=")
        if eq and key.strip() in seen:
            raise RunError(f"recipe {spec!r}: {key.strip()} is given twice")
        seen.add(key.strip())
        if eq and key.strip() in SCHEDULE_KEYS:
            sched[key.strip()] = val.strip()
        else:
            keep.append(m)
    return ":".join(keep), sched


def recipe_schedule(spec: str, cfg: "TrainConfig") -> Optional[Tuple[float, str]]:
    """(switch_at, target) of the target-precision schedule of a recipe spec, or None.

    `--switch-at P` (cfg.switch_at) applies to every quantized recipe; a spec's own
    `:switch_at=P` / `:switch_at=off` and `:switch_to=NAME` override it for that recipe, so one
    run can hold `zhou2025` and `zhou2025:switch_at=0.9` side by side."""
    base, sched = _split_schedule(spec)
    if base.split(":")[0] == "fp32":
        return None
    at: Optional[float] = cfg.switch_at
    raw = sched.get("switch_at")
    if raw is not None:
        v = _spec_value(raw)
        if v is False:
            at = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            at = float(v)
        else:
            raise RunError(f"recipe {spec!r}: switch_at must be a fraction of training in [0, 1] or off, got {raw!r}")
    if at is None:
        return None
    target = sched.get("switch_to", cfg.switch_to)
    resolve_recipe(target)  # a known recipe (fp32 included)
    return at, target


def resolve_recipe(spec: str) -> Any:
    """A recipe spec -> None (fp32: the unconverted model) or an fp4swift.Recipe.

    A spec is a recipe name, optionally with ablation overrides of the recipe's fields:
    `wang2025:dge=off`, `wang2025:alpha=0.97:compensate=off`, `wang2025:granularity=tensor`,
    `mxfp4:scale_rule=e8m0_rceil`, `nvfp4:scale_rule=nvfp4_torchao:stochastic_bits=8`
    (fields and shortcuts of fp4swift.Recipe.replace), and the schedule keys of
    `recipe_schedule` (`zhou2025:switch_at=0.9:switch_to=fp32`). Raises RunError on a bad spec."""
    import fp4swift as f4

    name, *mods = _split_schedule(spec)[0].split(":")
    known = available_recipes()
    if name not in known:
        raise RunError(f"unknown recipe {name!r}; available: {', '.join(known)}")
    if name == "fp32":
        if mods:
            raise RunError(f"recipe {spec!r}: fp32 (the unconverted model) takes no overrides")
        return None
    try:
        recipe = f4.Recipe.get(name)
    except (NotImplementedError, ValueError) as e:
        raise RunError(f"recipe {name!r}: {e}") from None
    if mods:
        changes = {}
        for m in mods:
            key, eq, val = m.partition("=")
            if not eq or not key.strip():
                raise RunError(f"recipe {spec!r}: overrides look like name:field=value, got {m!r}")
            allowed = sorted({f.name for f in fields(recipe)} - {"name", "description"} | {"fmt", "granularity",
                                                                                           "grad_fp8", "scale_rule",
                                                                                           "stochastic_bits"})
            if key.strip() not in allowed:
                raise RunError(f"recipe {spec!r}: unknown field {key.strip()!r}; fields: {', '.join(allowed)}")
            changes[key.strip()] = _spec_value(val)
        try:
            recipe = recipe.replace(**changes)
        except (TypeError, ValueError) as e:
            raise RunError(f"recipe {spec!r}: {str(e).splitlines()[0]}") from None
    return recipe


def check_recipes(names: Sequence[str], cfg: Optional["TrainConfig"] = None) -> None:
    """Unknown names, bad overrides, or FP4 recipes without fp4swift.torch: a RunError before any training."""
    recipes = [resolve_recipe(n) for n in names]
    for n in names:
        recipe_schedule(n, cfg or TrainConfig())  # the schedule keys' values and targets
    if any(r is not None for r in recipes):
        try:
            import fp4swift.torch  # noqa: F401
        except ImportError as e:
            raise RunError(f"recipes other than fp32 need the PyTorch integration fp4swift.torch ({e})") from None


def prepare_model(base: nn.Module, recipe: str) -> nn.Module:
    """A deep copy of the base model under the recipe spec; 'fp32' is the unconverted model."""
    model = copy.deepcopy(base)
    r = resolve_recipe(recipe)
    if r is not None:
        import fp4swift.torch as f4t

        f4t.convert_(model, recipe=r)
    return model


def converted_linear_names(model: nn.Module, recipe: str = "wang2025") -> List[str]:
    """Qualified names of the nn.Linear modules convert() swaps under `recipe` (on a copy)."""
    try:
        import fp4swift.torch as f4t
    except ImportError:
        # the documented default policy: every nn.Linear except the LM head
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    probe = f4t.convert(model, recipe=recipe, inplace=False)
    return [n for n, m in probe.named_modules() if isinstance(m, f4t.FP4Linear)]


def check_layer_shapes(model: nn.Module, spec: str, cfg: "TrainConfig") -> None:
    """RunError unless every converted layer of `model` (the recipe spec's copy) runs under its
    recipe, and under the spec's schedule target: one forward and backward of each distinct
    (recipe, in, out features) at the run's batch shape, on random data, before anything is
    written (block sizes that do not divide a layer, Quartet's multiples of 32, ...). The
    library's per-call counter of random draws is left as it was, so the run's numbers do not
    change."""
    import itertools

    import numpy as np

    import fp4swift as f4
    import fp4swift.linear as flinear
    import fp4swift.torch as f4t
    from fp4swift._native import FP4Error

    plan = recipe_schedule(spec, cfg)
    target = resolve_recipe(plan[1]) if plan is not None else None
    tokens = cfg.batch_size * cfg.seq_len
    rng = np.random.default_rng(0)
    seen = set()
    resume_at = next(flinear._CALLS)
    try:
        for name, m in f4t.linear_layers(model):
            if not isinstance(m, (f4t.FP4Linear, f4t.FP4Conv1D)):
                continue
            w = (m.weight.t() if isinstance(m, f4t.FP4Conv1D) else m.weight).detach().contiguous().numpy()
            b = None if m.bias is None else m.bias.detach().numpy()
            n, k = w.shape
            for r in [m.recipe] + ([target] if target is not None else []):
                key = (id(r), n, k, b is not None)
                if key in seen:
                    continue
                seen.add(key)
                x = rng.standard_normal((tokens, k)).astype(np.float32)
                try:
                    y, saved = f4.linear_forward(x, w, b, r)
                    f4.linear_backward(np.ones_like(y), saved)
                except (ValueError, TypeError, FP4Error) as e:
                    what = r.name if r is m.recipe else f"{r.name} (the schedule's target)"
                    raise RunError(f"recipe {spec!r} cannot run layer {name} ({k} -> {n} features) under {what}: "
                                   f"{str(e).splitlines()[0]}") from None
    finally:
        flinear._CALLS = itertools.count(resume_at)
