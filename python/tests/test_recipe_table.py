"""One recipe description on both sides of the ABI: every named recipe of `f4.recipes()` equals
the Swift core's table (`LinearRecipe.named`, exported as fp4swift_linear_recipe_named) field
by field, and quartet's Python quantizer fields describe the quantizers its Swift layer uses."""
from __future__ import annotations

import ctypes

import pytest

import fp4swift as f4
from fp4swift import _native


def _swift(name: str) -> _native.LinearRecipe:
    out = _native.LinearRecipe()
    _native.check(_native.lib.fp4swift_linear_recipe_named(name.encode(), ctypes.byref(out)))
    return out


def _fields(s):
    """A ctypes struct as nested (name, value) tuples."""
    out = []
    for name, ctype in s._fields_:
        v = getattr(s, name)
        out.append((name, _fields(v) if isinstance(v, ctypes.Structure) else v))
    return tuple(out)


def test_every_python_recipe_is_in_the_swift_table():
    assert set(f4.recipes()) >= {"fp32", "fp4-direct", "wang2025", "mxfp4", "nvfp4", "quartet", "fp8", "zhou2025"}
    for name in f4.recipes():
        _swift(name)  # raises for a name Swift does not know


@pytest.mark.parametrize("name", [n for n in f4.recipes() if n != "quartet"])
def test_linear_recipes_match_field_by_field(name):
    assert _fields(f4.Recipe.get(name).to_c()) == _fields(_swift(name))


def test_quartet_quantizers_match():
    r, s = f4.Recipe.get("quartet"), _swift("quartet")
    assert _fields(r.input.to_c()) == _fields(s.input)
    assert _fields(r.weight.to_c()) == _fields(s.weight)
    assert _fields(r.gradient.to_c()) == _fields(s.gradient)


def test_unknown_name_is_refused():
    with pytest.raises(f4.FP4ValueError, match="unknown recipe"):
        _swift("fp5")
