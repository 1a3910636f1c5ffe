"""Issue 18: what a new user and an independent audit broke (API and CLI misuse).

Each test here failed before its fix. The training-run file handling (locks, late failures,
write errors, memory estimate, resume checks, --data messages, signals) is in
test_train_robustness.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import fp4swift as f4
from fp4swift.quantization import QuantizerSpec

# ---------------------------------------------------------------------------------------
# item 8: recipe field values


def test_replace_accepts_a_format_name_and_keeps_the_quantizer_layout():
    r = f4.Recipe.get("wang2025")
    got = r.replace(input="e4m3")
    assert got.input == QuantizerSpec.make("e4m3", "row", "absmax", nonfinite="raise")
    assert got.weight == r.weight
    mx = f4.Recipe.get("mxfp4").replace(weight="e1m2")
    assert mx.weight == QuantizerSpec.make("e1m2", "block(32)", "e8m0", nonfinite="raise")


def test_replace_accepts_a_full_spec_and_none():
    r = f4.Recipe.get("wang2025")
    got = r.replace(gradient="e5m2/tensor/pow2")
    assert got.gradient == QuantizerSpec.make("e5m2", "tensor", "pow2")
    for none in ("none", "off", "float32", None, False):
        assert f4.Recipe.get("fp4-direct").replace(gradient=none).gradient is None
        assert f4.Recipe.get("fp4-direct").replace(weight=none).weight is None
    assert f4.Recipe.get("fp8").replace(backward_weight="forward").backward_weight == "forward"
    assert f4.Recipe.get("fp8").replace(backward_weight="none").backward_weight is None
    # a bare format keeps the forward operand's layout when the backward used the forward's
    got = f4.Recipe.get("wang2025").replace(backward_weight="e4m3")
    assert got.backward_weight == QuantizerSpec.make("e4m3", "row", "absmax", nonfinite="raise")


def test_replaced_recipe_runs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 32)).astype(np.float32)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    r = f4.Recipe.get("fp4-direct").replace(input="e4m3", gradient="none")
    y, saved = f4.linear_forward(x, w, None, r)
    xq = f4.fake_quantize(x, fmt="e4m3", granularity="tensor", scale_rule="absmax")
    wq = f4.fake_quantize(w, fmt="e2m1", granularity="tensor", scale_rule="absmax")
    np.testing.assert_allclose(y, xq @ wq.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes, error, needle", [
    (dict(input="foo"), ValueError, "input must be"),
    (dict(gradient=3), TypeError, "gradient must be"),
    (dict(input="e4m3/nosuch"), ValueError, "granularity"),
    (dict(backward_input="sideways"), ValueError, "backward_input must be 'forward'"),
    (dict(dge=1.5), TypeError, "dge must be on or off"),
    (dict(dge="maybe"), TypeError, "dge must be on or off"),
    (dict(occ=2), TypeError, "occ must be on or off"),
    (dict(compensate="yes"), TypeError, "compensate must be on or off"),
    (dict(wgrad_hadamard=1.5), TypeError, "wgrad_hadamard"),
    (dict(roles="lm_head"), TypeError, "roles"),
])
def test_replace_rejects_bad_values_clearly(changes, error, needle):
    with pytest.raises(error, match=needle):
        f4.Recipe.get("wang2025").replace(**changes)


def test_directly_built_recipe_with_a_string_quantizer_is_a_type_error():
    r = f4.Recipe("mine", input="e2m1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input must be"):
        r.validate()


def test_switches_accept_zero_and_one():
    assert f4.Recipe.get("wang2025").replace(dge=0).dge is False
    assert f4.Recipe.get("fp4-direct").replace(occ=np.True_).occ is True
