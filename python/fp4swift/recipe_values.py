"""The values a Recipe field accepts (used by `Recipe.replace` and `Recipe.validate`).

`Recipe.replace(input="e4m3")`, `fp4swift train --recipes wang2025:gradient=none` and
`wang2025:dge=off` pass strings, numbers and booleans; this module turns them into the field
types or raises one clear TypeError / ValueError naming the field and what it takes:

- quantizer fields (input, weight, gradient): a QuantizerSpec; a format name (`"e4m3"`: the
  field's current granularity, scale rule and rounding are kept, or per-row absmax RNE when the
  field was float32); `"FMT/GRANULARITY[/SCALE_RULE[/ROUNDING]]"` (`"e4m3/block(32)/e8m0"`,
  `"e2m1/block(16)/nvfp4_torchao/stochastic(8)"`: ROUNDING `stochastic(r)` is stochastic rounding
  with r random bits); or
  none (`None`, `False`, `"none"`, `"off"`, `"float32"`, `"fp32"`) for float32.
- backward_weight / backward_input: `"forward"`, none (float32), or a quantizer as above.
- switches (occ, compensate, dge): a bool (0 and 1 are accepted as False and True).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

import numpy as np

from .quantization import FORMATS, QuantizerSpec

QUANTIZER_FIELDS = ("input", "weight", "gradient")
BACKWARD_FIELDS = ("backward_weight", "backward_input")
BOOL_FIELDS = ("occ", "compensate", "dge")
_NONE_WORDS = ("none", "off", "float32", "fp32")


class FieldValueError(ValueError, TypeError):
    """A value a recipe field cannot take. A ValueError; also a TypeError, which earlier versions
    raised for a bad backward_weight / backward_input, so code catching that keeps working."""


def _what(field: str) -> str:
    extra = "'forward', " if field in BACKWARD_FIELDS else ""
    return (f"{field} must be {extra}a QuantizerSpec, a format name ({', '.join(FORMATS)}), "
            f"'FMT/GRANULARITY[/SCALE_RULE[/ROUNDING]]' (ROUNDING may be 'stochastic(r)') or none (float32)")


def as_quantizer(field: str, value: Any, current: Any = None) -> Optional[QuantizerSpec]:
    """`value` for a quantizer field as a QuantizerSpec or None (see the module docstring);
    `current` is the spec whose granularity, scale rule and rounding a bare format name keeps."""
    if value is None or value is False:
        return None
    if isinstance(value, QuantizerSpec):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{_what(field)}, got {value!r}")
    text = value.strip()
    if text.lower() in _NONE_WORDS:
        return None
    parts = [p.strip() for p in text.split("/")]
    fmt = parts[0]
    if fmt not in FORMATS or len(parts) > 4:
        raise FieldValueError(f"{_what(field)}, got {value!r}")
    base = current if isinstance(current, QuantizerSpec) else None
    nonfinite = base.nonfinite if base is not None else ("propagate" if field == "gradient" else "raise")
    if len(parts) == 1:
        if base is not None:
            return QuantizerSpec.make(fmt, base.granularity_label, base.scale_rule, base.rounding, None, base.seed,
                                      base.nonfinite, base.stochastic_bits)
        return QuantizerSpec.make(fmt, "row", "absmax", nonfinite=nonfinite)
    bits = 0
    if len(parts) == 4:
        m = re.fullmatch(r"stochastic\((\d+)\)", parts[3])
        if m:
            parts[3], bits = "stochastic", int(m.group(1))
    try:
        return QuantizerSpec.make(fmt, parts[1], *parts[2:], nonfinite=nonfinite,  # type: ignore[arg-type]
                                  stochastic_bits=bits)
    except (TypeError, ValueError) as e:
        raise FieldValueError(f"{field}={value!r}: {e}") from None


def as_backward(field: str, value: Any, current: Any = None) -> Any:
    """`value` for backward_weight / backward_input: "forward", None or a QuantizerSpec."""
    if isinstance(value, str) and value.strip() == "forward":
        return "forward"
    return as_quantizer(field, value, current)


def is_switch(value: Any) -> bool:
    """A value a switch field (occ, compensate, dge) holds: a bool, or the ints 0 and 1."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (int, np.integer)) and int(value) in (0, 1)


def as_switch(field: str, value: Any) -> bool:
    if not is_switch(value):
        raise TypeError(f"{field} must be on or off (a bool), got {value!r}")
    return bool(value)


def coerce_changes(recipe: Any, changes: Dict[str, Any]) -> Dict[str, Any]:
    """The changes of `Recipe.replace` with each value in its field's type (or a clear error).
    A backward field given a bare format name keeps the granularity, scale rule and rounding of
    its current quantizer, or of the forward's (W for backward_weight, X for backward_input)."""
    out = dict(changes)
    for field, value in changes.items():
        if field in QUANTIZER_FIELDS:
            out[field] = as_quantizer(field, value, getattr(recipe, field))
        elif field in BACKWARD_FIELDS:
            current = getattr(recipe, field)
            if current == "forward":
                current = recipe.weight if field == "backward_weight" else recipe.input
            out[field] = as_backward(field, value, current)
        elif field in BOOL_FIELDS:
            out[field] = as_switch(field, value)
    return out


def check_field_types(recipe: Any) -> None:
    """TypeErrors for field values of the wrong type (Recipe objects built directly)."""
    for field in QUANTIZER_FIELDS:
        v = getattr(recipe, field)
        if v is not None and not isinstance(v, QuantizerSpec):
            raise TypeError(f"{_what(field)}, got {v!r}; Recipe.replace({field}=...) converts names")
    for field in BOOL_FIELDS:
        as_switch(field, getattr(recipe, field))
    w = recipe.wgrad_hadamard
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or int(w) < 0:
        raise TypeError(f"wgrad_hadamard must be 0 or a power of two >= 2 (an int), got {w!r}")
    roles = recipe.roles
    if not isinstance(roles, (tuple, list)) or not all(
            isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str)
            and (p[1] is None or isinstance(p[1], str)) for p in roles):
        raise TypeError(f"roles must be (role, recipe name or None) pairs, got {roles!r}")
