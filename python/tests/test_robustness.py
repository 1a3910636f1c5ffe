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


# ---------------------------------------------------------------------------------------
# item 11: an out= that partly overlaps x


@pytest.mark.parametrize("shift", [1, 7, 32, -5])
def test_fake_quantize_into_a_partly_overlapping_out(shift):
    rng = np.random.default_rng(11 + shift)
    rows, cols = 6, 32
    buf = rng.standard_normal(rows * cols + 64).astype(np.float32)
    start = 32
    x = buf[start:start + rows * cols].reshape(rows, cols)
    out = buf[start + shift:start + shift + rows * cols].reshape(rows, cols)
    for kw in (dict(granularity="row"), dict(granularity="tensor"), dict(granularity="block(16)", scale_rule="e8m0")):
        buf2 = buf.copy()
        x2 = buf2[start:start + rows * cols].reshape(rows, cols)
        out2 = buf2[start + shift:start + shift + rows * cols].reshape(rows, cols)
        expected = f4.fake_quantize(x2.copy(), **kw)
        got = f4.fake_quantize(x2, out=out2, **kw)
        assert got is out2
        np.testing.assert_array_equal(got, expected)
    assert x.shape == out.shape


def test_fake_quantize_in_place_still_works():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    expected = f4.fake_quantize(x.copy())
    got = f4.fake_quantize(x, out=x)
    assert got is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("shift", [1, 16, -3])
def test_hadamard_into_a_partly_overlapping_out(shift):
    rng = np.random.default_rng(21 + shift)
    rows, cols = 4, 32
    buf = rng.standard_normal(rows * cols + 64).astype(np.float32)
    x = buf[32:32 + rows * cols].reshape(rows, cols)
    out = buf[32 + shift:32 + shift + rows * cols].reshape(rows, cols)
    expected = f4.hadamard(x.copy(), block=16)
    np.testing.assert_array_equal(f4.hadamard(x, block=16, out=out), expected)
    y = rng.standard_normal((rows, cols)).astype(np.float32)
    expected = f4.hadamard(y.copy(), block=32)
    np.testing.assert_array_equal(f4.hadamard(y, block=32, out=y), expected)


# ---------------------------------------------------------------------------------------
# item 12 (and item 7's pipes): `fp4swift formats` / `cost` misuse


@pytest.mark.parametrize("argv, needle", [
    (["--rows", "-3"], "--rows must be positive"),
    (["--cols", "0"], "--cols must be positive"),
    (["--rows", "100000", "--cols", "100000"], "too large"),
])
def test_formats_bad_sizes_are_one_line(capsys, argv, needle):
    from fp4swift import cli

    assert cli.main(["formats"] + argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("fp4swift formats: error:") and needle in err[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_formats_non_finite_input_is_one_line(tmp_path, capsys, bad):
    from fp4swift import cli

    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    x[1, 3] = bad
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["formats", "--input", str(tmp_path / "x.npy")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "1 non-finite value" in err[0]
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    assert cli.main(["formats", "--input", str(tmp_path / "s.npy")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "numeric array" in err[0]


@pytest.mark.parametrize("argv", [["cost"], ["formats", "--rows", "64", "--cols", "64"]])
def test_closed_pipe_ends_quietly(argv):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.Popen([sys.executable, "-m", "fp4swift.cli"] + argv, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # `| head` that has read enough
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert rc == 141


# ---------------------------------------------------------------------------------------
# item 13: convert's copy / in-place convention


def _tiny_model():
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(16, 32)
            self.down = torch.nn.Linear(32, 16)
            self.lm_head = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.lm_head(self.down(torch.relu(self.up(x))))

    torch.manual_seed(0)
    return Tiny()


def test_convert_inplace_false_leaves_the_model_alone():
    torch = pytest.importorskip("torch")
    import warnings

    import fp4swift.torch as f4t

    fp32 = _tiny_model()
    x = torch.randn(4, 16)
    before = fp32(x).detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp4 = f4t.convert(fp32, "wang2025", inplace=False)
    assert fp4 is not fp32
    assert type(fp32.up) is torch.nn.Linear and type(fp32.down) is torch.nn.Linear
    assert isinstance(fp4.up, f4t.FP4Linear) and isinstance(fp4.down, f4t.FP4Linear)
    assert fp4.up.weight is not fp32.up.weight
    assert torch.equal(fp32(x), before)
    assert not torch.equal(fp4(x), before)


def test_convert_underscore_is_in_place_without_warning():
    pytest.importorskip("torch")
    import warnings

    import fp4swift.torch as f4t

    m = _tiny_model()
    w = m.up.weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f4t.convert_(m, "wang2025") is m
        assert f4t.convert(m, "fp4-direct", inplace=True) is m
    assert isinstance(m.up, f4t.FP4Linear) and m.up.weight is w and m.up.recipe.name == "fp4-direct"


def test_convert_without_inplace_keeps_the_old_behaviour_and_warns():
    torch = pytest.importorskip("torch")
    import fp4swift.torch as f4t

    m = _tiny_model()
    with pytest.warns(FutureWarning, match="convert_"):
        out = f4t.convert(m, "wang2025")
    assert out is m and isinstance(m.up, f4t.FP4Linear)
    assert type(m.lm_head) is torch.nn.Linear
    with pytest.raises(TypeError, match="inplace"):
        f4t.convert(_tiny_model(), "wang2025", inplace="yes")
    with pytest.raises(ValueError, match="recipe"):
        f4t.convert(_tiny_model(), "fp3", inplace=False)
