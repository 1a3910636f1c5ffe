"""Zhou et al. 2025 (numerics.md §7) at the layer level: per-GEMM precisions (FP4 forward, FP8
backward), the fp8 recipe, the backward operands as recipe data, against a float64 numpy
reference built from reference.ref_quantize (independent of fp4swift).

Every GEMM's operands are spelled out here from the spec, not read from fp4swift.Recipe:
- zhou2025 (MLP role): X, W in e2m1 absmax on 1x16 blocks along K (forward);
- fp8 (attention role of zhou2025): X per token, W per output channel in e4m3 absmax;
- both, backward: dY in e5m2 per-tensor pow2; W (in dX = dY·W) and X (in dW = dYᵀ·X) in e4m3
  absmax per input feature (column), quantized from the float32 W and X.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fp4swift as f4
from linear_reference import rel_err
from reference import ref_quantize

F32 = np.float32
TOL = 1e-5


def ref_layer(x, w, b, dy, forward_fmt, forward_gran):
    """(y, dx, dw, db) in float64 from the spec's operands."""
    X, W = x.reshape(-1, x.shape[-1]), w
    xq = ref_quantize(X, fmt=forward_fmt, granularity=forward_gran, scale_rule="absmax").xhat
    wq = ref_quantize(W, fmt=forward_fmt, granularity=forward_gran, scale_rule="absmax").xhat
    y = xq.astype(np.float64) @ wq.astype(np.float64).T
    if b is not None:
        y = y + b
    G = ref_quantize(dy.reshape(-1, w.shape[0]), fmt="e5m2", granularity="tensor", scale_rule="pow2").xhat
    wb = ref_quantize(W, fmt="e4m3", granularity="column", scale_rule="absmax").xhat
    xb = ref_quantize(X, fmt="e4m3", granularity="column", scale_rule="absmax").xhat
    dx = G.astype(np.float64) @ wb.astype(np.float64)
    dw = G.astype(np.float64).T @ xb.astype(np.float64)
    db = None if b is None else dy.reshape(-1, w.shape[0]).astype(np.float64).sum(0)
    return y.reshape(x.shape[:-1] + (w.shape[0],)), dx.reshape(x.shape), dw, db


def layer(rng, shape=(24, 64), N=48):
    x = (rng.standard_t(3, size=shape) * 2).astype(F32)
    w = (rng.standard_normal((N, shape[-1])) * 10.0 ** rng.uniform(-2, 0, (N, 1))).astype(F32)
    w[N // 3] = 0  # an all-zero output channel
    b = rng.standard_normal(N).astype(F32)
    dy = (rng.standard_normal(shape[:-1] + (N,)) * 1e-3).astype(F32)
    return x, w, b, dy


@pytest.mark.parametrize("recipe,fmt,gran", [("zhou2025", "e2m1", "block(16)"), ("fp8", "e4m3", "row")])
@pytest.mark.parametrize("shape", [(24, 64), (2, 5, 32), (1, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_each_gemm_has_the_recipes_precision(rng, recipe, fmt, gran, shape, bias):
    x, w, b, dy = layer(rng, shape)
    b = b if bias else None
    y, saved = f4.linear_forward(x, w, b, recipe)
    dx, dw, db = f4.linear_backward(dy, saved)
    y_r, dx_r, dw_r, db_r = ref_layer(x, w, b, dy, fmt, gran)
    for name, got, want in (("y", y, y_r), ("dx", dx, dx_r), ("dw", dw, dw_r)):
        assert got.shape == want.shape and got.dtype == np.float32
        assert rel_err(got, want) <= TOL, f"{recipe} {name}: rel err {rel_err(got, want):.3g}"
    if bias:
        assert rel_err(db, db_r) <= TOL
    else:
        assert db is None


def test_fp4_forward_and_fp8_backward_are_really_different_precisions(rng):
    """Relative (Frobenius) errors against the exact GEMMs: FP4-sized in the forward (~13% on
    this heavy-tailed X), FP8-sized in the backward (~6%, mostly e5m2's 2 mantissa bits on dY)."""
    x, w, b, dy = layer(rng, (256, 128), 64)
    y, saved = f4.linear_forward(x, w, None, "zhou2025")
    dx, dw, _ = f4.linear_backward(dy, saved)
    X, W, D = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)

    def err(got, exact):
        return float(np.linalg.norm(got - exact) / np.linalg.norm(exact))

    e_y, e_dx, e_dw = err(y, X @ W.T), err(dx, D @ W), err(dw, D.T @ X)
    assert e_y > 0.08, e_y
    assert max(e_dx, e_dw) < 0.75 * e_y, (e_y, e_dx, e_dw)


def test_saved_state_holds_the_e4m3_codes_of_x_per_column(rng):
    x, w, b, dy = layer(rng, (32, 48), 16)
    _, saved = f4.linear_forward(x, w, b, "zhou2025")
    ref = ref_quantize(x, fmt="e4m3", granularity="column", scale_rule="absmax")
    assert saved.x is None
    np.testing.assert_array_equal(saved.x_codes, ref.codes)  # one byte per element
    np.testing.assert_array_equal(saved.x_scales, ref.scales.scale)
    assert saved.nbytes == x.size + 4 * x.shape[1]
    assert saved.residual is None


def test_gemm_operands_describe_the_recipe():
    z = f4.Recipe.get("zhou2025").gemm_operands()
    (fx, fw), (gd, gw), (wd, wx) = z["forward"], z["input_grad"], z["weight_grad"]
    assert (fx.fmt, fx.granularity_label, fw.fmt, fw.granularity_label) == ("e2m1", "block(16)", "e2m1", "block(16)")
    assert gd is wd and (gd.fmt, gd.granularity, gd.scale_rule) == ("e5m2", "tensor", "pow2")
    assert (gw.fmt, gw.granularity, wx.fmt, wx.granularity) == ("e4m3", "column", "e4m3", "column")
    w = f4.Recipe.get("wang2025").gemm_operands()
    assert w["input_grad"][1] is w["forward"][1] and w["weight_grad"][1] is w["forward"][0]
    assert w["input_grad"][0] is None
    assert all(a is None and b is None for a, b in f4.Recipe.get("fp32").gemm_operands().values())


def test_module_policy():
    z = f4.Recipe.get("zhou2025")
    assert z.for_role("mlp") is z
    assert z.for_role("attention").name == "fp8"
    assert z.for_role("lm_head") is None and z.for_role("other") is None
    w = f4.Recipe.get("wang2025")
    assert w.for_role("attention") is w and w.for_role("other") is w and w.for_role("lm_head") is None
    with pytest.raises(ValueError):
        z.for_role("embedding")
    with pytest.raises(ValueError):
        w.replace(roles=(("attn", None),))
    with pytest.raises(ValueError):
        w.replace(roles=(("attention", "nope"),))


def test_float32_backward_operands(rng):
    """backward_weight / backward_input None: the backward GEMMs see the float32 W and X (the
    forward keeps a reference to x, like the fp32 recipe)."""
    x, w, b, dy = layer(rng, (16, 32), 8)
    r = f4.Recipe.get("zhou2025").replace(name="fp4-fwd-only", gradient=None, backward_weight=None, backward_input=None)
    y, saved = f4.linear_forward(x, w, b, r)
    assert saved.x is x
    dx, dw, _ = f4.linear_backward(dy, saved)
    D = dy.astype(np.float64)
    assert rel_err(dx, D @ w.astype(np.float64)) <= TOL
    assert rel_err(dw, D.T @ x.astype(np.float64)) <= TOL
    y_r = ref_layer(x, w, b, dy, "e2m1", "block(16)")[0]
    assert rel_err(y, y_r) <= TOL


def test_bad_backward_operands(rng):
    r = f4.Recipe.get("zhou2025")
    # A name that is not a format (recipe_values: a ValueError naming the field and what it takes).
    with pytest.raises(ValueError, match="backward_weight"):
        r.replace(backward_weight="fp8")
    with pytest.raises(ValueError):
        f4.Recipe.get("wang2025").replace(backward_input=None)  # OCC's residual belongs to X_q
    x, w, b, dy = layer(rng, (4, 24), 8)  # K = 24 is not a multiple of 16
    with pytest.raises(ValueError, match="16"):
        f4.linear_forward(x, w, b, "zhou2025")
    x, w, b, dy = layer(rng, (4, 32), 8)
    x[1, 2] = np.nan
    with pytest.raises(f4.NonFiniteError):
        f4.linear_forward(x, w, b, "zhou2025")
    # An unknown mode in the C struct is refused by the library, not trusted.
    c = r.to_c()
    c.backward_weight_mode = 7
    import ctypes

    from fp4swift import _native
    sizes = [ctypes.c_int64() for _ in range(4)]
    status = _native.lib.fp4swift_linear_saved_sizes(4, 32, ctypes.byref(c), *(ctypes.byref(v) for v in sizes))
    assert status == _native.INVALID_ARGUMENT


def test_empty_and_thread_independent(rng, restore_threads):
    x, w, b, dy = layer(rng, (0, 32), 8)
    y, saved = f4.linear_forward(x, w, b, "zhou2025")
    dx, dw, db = f4.linear_backward(dy, saved)
    assert y.shape == (0, 8) and not dw.any() and not db.any()
    x, w, b, dy = layer(rng, (300, 64), 40)
    outs = []
    for n in (1, 2, 3):
        f4.set_num_threads(n)
        y, saved = f4.linear_forward(x, w, b, "zhou2025")
        outs.append((y,) + f4.linear_backward(dy, saved))
    for o in outs[1:]:
        for a, c in zip(outs[0], o):
            np.testing.assert_array_equal(a, c)


def test_recipe_is_a_frozen_dataclass_with_the_new_fields():
    r = f4.Recipe.get("zhou2025")
    assert {"backward_weight", "backward_input", "roles"} <= {f.name for f in dataclasses.fields(r)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.roles = ()  # type: ignore[misc]


def test_own_backward_weight_with_dge_keeps_the_forward_scales_for_dge(rng):
    """dX uses the backward's own W quantization while DGE still reads v = W / s_w with the
    forward's scales: the two uses of W are independent."""
    from linear_reference import ref_dge_derivative

    x, w, b, dy = layer(rng, (16, 32), 8)
    w[w.shape[0] // 3] = rng.standard_normal(32).astype(F32)  # no zero channel: tensor scale only
    e4m3_col = f4.QuantizerSpec.make("e4m3", "column", "absmax", nonfinite="raise")
    r = f4.Recipe.get("fp4-direct").replace(name="direct-dge-fp8w", dge=True, backward_weight=e4m3_col)
    y, saved = f4.linear_forward(x, w, b, r)
    dx, dw, _ = f4.linear_backward(dy, saved)
    xq = ref_quantize(x, fmt="e2m1", granularity="tensor", scale_rule="absmax").xhat.astype(np.float64)
    wq = ref_quantize(w, fmt="e2m1", granularity="tensor", scale_rule="absmax")
    wb = ref_quantize(w, fmt="e4m3", granularity="column", scale_rule="absmax").xhat.astype(np.float64)
    D = dy.astype(np.float64)
    v = np.clip((w / wq.scales.scale.astype(F32)[0]).astype(F32), -6, 6)
    assert rel_err(y, xq @ wq.xhat.astype(np.float64).T + b) <= TOL
    assert rel_err(dx, D @ wb) <= TOL
    assert rel_err(dw, (D.T @ xq) * ref_dge_derivative(v)) <= TOL
