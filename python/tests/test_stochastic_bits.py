"""Stochastic rounding with r random bits (`stochastic_bits`, numerics.md §1) and the recipe
spellings of the reference rules (numerics.md §2, §6).

The bit-exact oracle of r-bit rounding is gfloat (test_gfloat_reference.py); this file holds the
properties: reproducible for a seed, independent of the thread count, bias against exact
stochastic rounding within the stated bound (E[q_r] − v ∈ (−2^−r, 0] grid steps, toward zero),
and the argument checks.
"""
from __future__ import annotations

import numpy as np
import pytest

import fp4swift as f4
from fp4swift.quantization import fake_quantize_with
from reference import random_bits

F32 = np.float32


def sr(x, r, seed=3, **kw):
    kw.setdefault("granularity", "tensor")
    kw.setdefault("scale_rule", "e8m0")
    return f4.fake_quantize(x, rounding="stochastic", seed=seed, stochastic_bits=r, **kw)


def unit_scale_input(values: np.ndarray) -> np.ndarray:
    """values with a leading 4.0, so the tensor e8m0 scale of e2m1 is 1 and v = x."""
    return np.concatenate([[F32(4.0)], values.astype(F32)]).reshape(1, -1)


@pytest.mark.parametrize("r", [1, 8, 16, 32])
def test_reproducible_and_seed_dependent(r):
    x = np.random.default_rng(0).standard_normal((64, 512)).astype(F32)
    a, b = sr(x, r, seed=11, granularity="block(32)"), sr(x, r, seed=11, granularity="block(32)")
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert not np.array_equal(a, sr(x, r, seed=12, granularity="block(32)"))
    q1 = f4.quantize(x, granularity="block(32)", scale_rule="e8m0", rounding="stochastic", seed=11, stochastic_bits=r)
    assert np.array_equal(q1.dequantize().view(np.uint32), a.view(np.uint32))


@pytest.mark.parametrize("rule", ["absmax", "e8m0_rceil", "nvfp4", "nvfp4_torchao"])
def test_thread_count_independent(rule):
    x = np.random.default_rng(1).standard_normal((1024, 256)).astype(F32)
    before = f4.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            f4.set_num_threads(n)
            outs.append(sr(x, 8, seed=5, granularity="block(16)", scale_rule=rule))
    finally:
        f4.set_num_threads(before)
    for o in outs[1:]:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))


@pytest.mark.parametrize("r", [1, 2, 3, 8])
@pytest.mark.parametrize("frac", [0.3, 0.5, 0.8125, 0.99])
def test_probability_is_the_truncated_fraction(r, frac):
    """One value v = 1 + frac·0.5 (e2m1 step 0.5 on [1, 2)) drawn 2^18 times: P(up) = floor(frac·2^r)/2^r."""
    n = 1 << 18
    v = F32(1 + frac * 0.5)
    out = sr(unit_scale_input(np.full(n, v)), r, seed=9).reshape(-1)[1:]
    up = np.mean(out > v)
    p = np.floor(frac * 2 ** r) / 2 ** r
    assert set(np.unique(out)) <= {F32(1.0), F32(1.5)}
    assert abs(up - p) < 5 * np.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12
    # ... which is the draw rule exactly: up iff floor(frac·2^r) + R_i ≥ 2^r.
    R = random_bits(9, n + 1, r)[1:]
    assert np.array_equal(out > v, np.floor(frac * 2 ** r) + R >= 2 ** r)


@pytest.mark.parametrize("r", [4, 8, 12])
def test_bias_against_exact_stochastic_rounding(r):
    """Gaussian data, e2m1, block(32) absmax scales: the mean of (q_r − q_exact) over the elements, in
    grid steps, lies in (−2^−r, 0] and is close to −2^−(r+1) (the truncated bits average half a unit
    of the r-th bit); exact stochastic rounding itself is unbiased."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((512, 1024)).astype(F32)
    kw = dict(granularity="block(32)", scale_rule="e8m0")
    q = f4.quantize(x, **kw)
    s = np.repeat(np.exp2(q.scales.astype(np.float64) - 127), 32, axis=1)
    v = x.astype(np.float64) / s
    a = np.minimum(np.abs(v), 6)
    step = np.where(a < 2, 0.5, np.where(a < 4, 1.0, 2.0))
    inside = np.abs(v) < 6
    bias = []
    for seed in range(4):
        qr = sr(x, r, seed=seed, **kw).astype(np.float64) / s
        qe = sr(x, 0, seed=seed, **kw).astype(np.float64) / s
        bias.append(np.mean(((np.abs(qr) - a) / step)[inside]) - np.mean(((np.abs(qe) - a) / step)[inside]))
        exact_bias = np.mean(((np.abs(qe) - a) / step)[inside])
        assert abs(exact_bias) < 5 * 0.5 / np.sqrt(inside.sum())
    b = float(np.mean(bias))
    se = 0.5 / np.sqrt(4 * inside.sum())
    assert -2.0 ** -r - 5 * se < b <= 5 * se
    assert abs(b + 2.0 ** -(r + 1)) < 0.25 * 2.0 ** -r + 5 * se


def test_zero_bits_is_exact_stochastic_rounding():
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(F32)
    a = f4.fake_quantize(x, rounding="stochastic", seed=4)
    b = f4.fake_quantize(x, rounding="stochastic", seed=4, stochastic_bits=0)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_argument_checks():
    x = np.ones((2, 32), F32)
    with pytest.raises(ValueError, match="stochastic_bits"):
        f4.fake_quantize(x, stochastic_bits=8)  # nearest_even
    for bad in (-1, 33):
        with pytest.raises(ValueError, match="0..32"):
            f4.fake_quantize(x, rounding="stochastic", stochastic_bits=bad)
    with pytest.raises(TypeError):
        f4.fake_quantize(x, rounding="stochastic", stochastic_bits=True)
    with pytest.raises(TypeError):
        f4.fake_quantize(x, rounding="stochastic", stochastic_bits=2.0)
    # The library checks again (a hand-made C struct).
    q = f4.QuantizerSpec.make(rounding="stochastic").to_c()
    q.stochastic_bits = 40
    out = np.empty_like(x)
    bad = __import__("ctypes").c_int64()
    from fp4swift import _native
    from fp4swift._arrays import fptr
    status = _native.lib.fp4swift_fake_quantize(fptr(x), 2, 32, __import__("ctypes").byref(q), fptr(out),
                                                __import__("ctypes").byref(bad))
    assert status == _native.INVALID_ARGUMENT and b"stochastic_bits" in _native.lib.fp4swift_last_error()


# ---------------------------------------------------------------------------------------
# The new rules by name in recipes


def test_recipe_specs_name_the_new_rules():
    r = f4.Recipe.get("mxfp4:scale_rule=e8m0_rceil")
    assert r.input.scale_rule == r.weight.scale_rule == r.gradient.scale_rule == "e8m0_rceil"
    n = f4.Recipe.get("nvfp4:scale_rule=nvfp4_torchao:stochastic_bits=8")
    assert {n.input.scale_rule, n.weight.scale_rule, n.gradient.scale_rule} == {"nvfp4_torchao"}
    assert n.gradient.stochastic_bits == 8 and n.input.stochastic_bits == 0
    w = f4.Recipe.get("wang2025").replace(input="e2m1/row/e8m0_even", weight="e2m1/block(16)/nvfp4_torchao")
    assert w.input.scale_rule == "e8m0_even" and w.weight.scale_rule == "nvfp4_torchao"
    g = f4.Recipe.get("nvfp4").replace(gradient="e2m1/block(16)/nvfp4_torchao/stochastic(8)")
    assert g.gradient.rounding == "stochastic" and g.gradient.stochastic_bits == 8
    with pytest.raises(ValueError, match="rounds stochastically"):
        f4.Recipe.get("mxfp4:stochastic_bits=8")
    with pytest.raises(ValueError, match="scale rule"):
        f4.Recipe.get("mxfp4:scale_rule=e8m0_nope")
    with pytest.raises(ValueError, match="quartet"):
        f4.Recipe.get("quartet:scale_rule=e8m0_rceil")


@pytest.mark.parametrize("spec", ["mxfp4:scale_rule=e8m0_rceil", "mxfp4:scale_rule=e8m0_ceil",
                                  "mxfp4:scale_rule=e8m0_even", "nvfp4:scale_rule=nvfp4_torchao",
                                  "nvfp4:scale_rule=nvfp4_torchao:stochastic_bits=8", "nvfp4:stochastic_bits=4"])
def test_linear_layer_runs_the_new_rules(spec):
    """The layer's forward quantizes X and W with the named rule: Y equals the product of the
    fake-quantized operands (simulated GEMM; packed within the §11 bound)."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((32, 64)).astype(F32), rng.standard_normal((64, 64)).astype(F32)
    r = f4.Recipe.get(spec)
    for gemm in ("simulated", "packed"):
        rg = r.replace(gemm=gemm)
        y, saved = f4.linear_forward(x, w, None, rg)
        xq = fake_quantize_with(x, r.input)
        wq = fake_quantize_with(w, r.weight)
        ref = xq.astype(np.float64) @ wq.astype(np.float64).T
        bound = 1e-5 if gemm == "simulated" else 2e-6 * 10
        assert np.max(np.abs(y - ref)) <= bound * np.max(np.abs(xq).astype(np.float64) @ np.abs(wq).T.astype(np.float64))
        dx, dw, db = f4.linear_backward(rng.standard_normal((32, 64)).astype(F32), saved)
        assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))


def test_packed_gemm_on_nvfp4_torchao_and_e8m0_modes():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((16, 64)).astype(F32), rng.standard_normal((24, 64)).astype(F32)
    for rule, block in (("nvfp4_torchao", 16), ("e8m0_rceil", 32), ("e8m0_ceil", 32), ("e8m0_even", 32)):
        qa = f4.quantize(a, granularity=f"block({block})", scale_rule=rule)
        qb = f4.quantize(b, granularity=f"block({block})", scale_rule=rule)
        assert qa.scales.dtype == np.uint8
        c = f4.gemm(qa, qb)
        A, B = qa.dequantize().astype(np.float64), qb.dequantize().astype(np.float64)
        G = 64 // block
        assert np.all(np.abs(c - A @ B.T) <= (G + 5) * 2.0 ** -24 * (np.abs(A) @ np.abs(B).T) + 1e-30)


def test_train_and_torch_accept_the_specs():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from fp4swift.train.recipes import resolve_recipe
    import fp4swift.torch as f4t

    r = resolve_recipe("mxfp4:scale_rule=e8m0_rceil")
    assert r.input.scale_rule == "e8m0_rceil"
    m = torch.nn.Sequential(torch.nn.Linear(32, 16))
    f4t.convert_(m, recipe="nvfp4:scale_rule=nvfp4_torchao")
    assert m[0].recipe.input.scale_rule == "nvfp4_torchao"
    y = m(torch.randn(16, 32))
    y.sum().backward()
    assert torch.isfinite(m[0].weight.grad).all()


# ---------------------------------------------------------------------------------------
# fp4swift rules


def test_cli_rules_prints_where_rules_disagree(tmp_path, capsys):
    from fp4swift import cli

    x = np.random.default_rng(0).standard_normal((8, 64)).astype(F32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["rules", "--input", str(tmp_path / "x.npy"), "--show", "2"]) == 0
    out = capsys.readouterr().out
    for r in ("e8m0_ceil", "e8m0_even", "e8m0_rceil", "nvfp4_torchao"):
        assert r in out
    # The table's counts are the library's: e8m0 vs e8m0_ceil scale bytes differ in every block
    # whose amax is not a power of two.
    q0 = f4.quantize(x, granularity="block(32)", scale_rule="e8m0")
    q1 = f4.quantize(x, granularity="block(32)", scale_rule="e8m0_ceil")
    n = int(np.count_nonzero(q0.scales != q1.scales))
    assert f"e8m0           e8m0_ceil      {n:8,} ({100 * n / q0.scales.size:5.1f}%)" in out
    assert "blocks where the rules disagree" in out


def test_cli_rules_bad_arguments(tmp_path, capsys):
    from fp4swift import cli

    assert cli.main(["rules", "--fmt", "e8m0"]) == 2
    assert "element format" in capsys.readouterr().err
    assert cli.main(["rules", "--show", "-1"]) == 2
    np.save(tmp_path / "odd.npy", np.ones((4, 20), F32))
    assert cli.main(["rules", "--input", str(tmp_path / "odd.npy")]) == 1
    assert "not a multiple of 32" in capsys.readouterr().out
    np.save(tmp_path / "nan.npy", np.full((4, 32), np.nan, F32))
    assert cli.main(["rules", "--input", str(tmp_path / "nan.npy")]) == 2
