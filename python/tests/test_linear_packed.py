"""The linear layer with gemm="packed" (GEMMs on codes, docs/numerics.md §11) against
gemm="simulated" (sgemm on the fake-quantized operands): both multiply the same quantized
values, so they differ only by float32 rounding, within

    |packed − simulated| ≤ (R + G + 10)·2⁻²⁴·Σᵣ|aᵣ·bᵣ|

for a GEMM reducing over R elements in G scale groups (the packed bound of §11 plus sgemm's
own worst case R·2⁻²⁴, plus the bias and compensation additions), with a, b the GEMM's
operands. Where a test cannot rebuild the operands exactly it bounds Σ|a·b| from above.
"""
from __future__ import annotations

import numpy as np
import pytest

import fp4swift as f4

U = 2.0 ** -24
PATHS = f4.gemm_paths()


def _pair(name, **changes):
    r = f4.Recipe.get(name).replace(**changes) if changes else f4.Recipe.get(name)
    return r.replace(gemm="packed"), r.replace(gemm="simulated")


def _data(rng, T, K, N, outliers=True):
    x = rng.standard_normal((T, K)).astype(np.float32)
    if outliers:
        x[rng.random((T, K)) < 0.01] *= 30
    w = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    dy = rng.standard_normal((T, N)).astype(np.float32)
    return x, w, b, dy


def _groups(spec, K):
    return K // spec.block if spec is not None and spec.granularity in ("block", "block2d") else 1


def _run(recipe, x, w, b, dy, seed=None):
    y, saved = f4.linear_forward(x, w, b, recipe)
    if seed is not None:
        saved.gradient_seed = seed
    return (y, *f4.linear_backward(dy, saved, retain=True)), saved


FORWARD_CASES = [
    ("fp4-direct", {}),
    ("wang2025", {}),
    ("wang2025", {"occ_per": "row"}),
    ("wang2025", {"compensate": False}),
    ("wang2025", {"dge": False, "fmt": "e1m2"}),
    ("wang2025", {"fmt": "e3m0"}),
    ("mxfp4", {}),
    ("nvfp4", {}),
    ("zhou2025", {}),  # X_q's codes travel in the operand buffer; the saved X stays FP8
    ("zhou2025", {"granularity": "block(32)"}),
    ("zhou2025", {"granularity": "row", "fmt": "e3m0"}),
]


@pytest.mark.parametrize("name,changes", FORWARD_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("T,K,N", [(64, 64, 48), (37, 96, 32), (5, 32, 16)])
def test_forward_within_bound_and_backward_shares_operands(name, changes, T, K, N):
    rng = np.random.default_rng(T * 131 + K + N)
    if name == "mxfp4":
        N = -(-N // 32) * 32  # its backward groups dY and W along N in blocks of 32
    x, w, b, dy = _data(rng, T, K, N)
    packed, simulated = _pair(name, **changes)
    (yp, dxp, dwp, dbp), sp = _run(packed, x, w, b, dy)
    (ys, dxs, dws, dbs), ss = _run(simulated, x, w, b, dy, seed=sp.gradient_seed)
    # Forward: |X_op| ≤ 3|X| (X_q ≤ 2|X_c|, plus the residual), |W_q| ≤ 2|W|.
    G = max(_groups(packed.input, K), _groups(packed.weight, K))
    mag = (3 * np.abs(x).astype(np.float64)) @ (2 * np.abs(w).astype(np.float64)).T + np.abs(b)
    assert np.all(np.abs(yp.astype(np.float64) - ys) <= (K + G + 10) * U * mag)
    # The saved state is the same quantization either way: identical codes and scales.
    assert sp.x_codes.tobytes() == ss.x_codes.tobytes()
    assert sp.x_scales.tobytes() == ss.x_scales.tobytes()
    assert dbp.tobytes() == dbs.tobytes()
    if name not in ("nvfp4", "mxfp4"):
        # Float32 backward GEMMs (zhou2025: simulated FP8 ones): the same sgemm calls.
        assert dxp.tobytes() == dxs.tobytes() and dwp.tobytes() == dws.tobytes()


@pytest.mark.parametrize("granularity", ["block(16)", "block(32)", "row"])
def test_zhou2025_forward_is_the_packed_gemm_of_its_fp4_codes(granularity):
    # Its saved X is FP8, so X_q's codes travel in the operand buffer; the forward must be
    # exactly f4.gemm on the e2m1 codes of X and W, then + b, and save the same FP8 state.
    rng = np.random.default_rng(11)
    x, w, b, _ = _data(rng, 48, 64, 32)
    r = f4.Recipe.get("zhou2025").replace(granularity=granularity)
    gran, _, block = granularity.partition("(")
    kw = dict(block=int(block[:-1])) if block else {}
    qx = f4.quantize(x, "e2m1", gran, "absmax", **kw)
    qw = f4.quantize(w, "e2m1", gran, "absmax", **kw)
    want = f4.gemm(qx, qw) + b
    y, saved = f4.linear_forward(x, w, b, r)
    assert y.tobytes() == want.tobytes()
    p = f4.prepare_input(x, r)
    assert f4.linear_forward(None, w, b, r, prepared=p)[0].tobytes() == want.tobytes()
    _, ss = f4.linear_forward(x, w, b, r.replace(gemm="simulated"))
    assert saved.x_codes.tobytes() == ss.x_codes.tobytes() and saved.nbytes == ss.nbytes == x.size + 4 * x.shape[1]


def test_zhou2025_forward_stays_simulated_where_codes_do_not_fit_the_operand():
    # K = 1 with row scales: T/2 code bytes + T scales exceed the T-float operand buffer.
    rng = np.random.default_rng(12)
    x, w, b, dy = _data(rng, 9, 1, 4, outliers=False)
    packed, simulated = _pair("zhou2025", granularity="row")
    for u, v in zip(_run(packed, x, w, b, dy)[0], _run(simulated, x, w, b, dy)[0]):
        assert u.tobytes() == v.tobytes()


@pytest.mark.parametrize("T,K,N", [(64, 64, 48), (40, 32, 96), (17, 48, 16)])
def test_nvfp4_backward_on_codes_within_bound(T, K, N):
    rng = np.random.default_rng(T + 7 * K + N)
    x, w, b, dy = _data(rng, T, K, N, outliers=False)
    packed, simulated = _pair("nvfp4")
    (yp, dxp, dwp, dbp), sp = _run(packed, x, w, b, dy)
    (ys, dxs, dws, dbs), _ = _run(simulated, x, w, b, dy, seed=sp.gradient_seed)
    # dX = Q_g(dY)·W_q: rebuild both operands (same stochastic draws: same seed, same index).
    g = packed.gradient
    a = f4.fake_quantize(dy, g.fmt, "block", g.scale_rule, g.rounding, block=16, seed=sp.gradient_seed)
    wq = f4.fake_quantize(w, "e2m1", "block2d", "nvfp4", block=16)
    mag = np.abs(a).astype(np.float64) @ np.abs(wq).astype(np.float64)
    assert np.all(np.abs(dxp.astype(np.float64) - dxs) <= (N + N // 16 + 10) * U * mag)
    # dW on dYᵀ and X_qᵀ rotated along T: bound Σ|a·b| by Cauchy–Schwarz, with the rotation
    # keeping norms and the quantization at most tripling them.
    tp = (T + 15) // 16 * 16
    xq = f4.fake_quantize(x, "e2m1", "block", "nvfp4", block=16)
    mag_w = 9 * np.outer(np.linalg.norm(dy.astype(np.float64), axis=0), np.linalg.norm(xq.astype(np.float64), axis=0))
    assert np.all(np.abs(dwp.astype(np.float64) - dws) <= (tp + tp // 16 + 10) * U * mag_w)
    assert not np.array_equal(dxp, dxs)
    assert dbp.tobytes() == dbs.tobytes()


def test_nvfp4_backward_with_nonfinite_dy_propagates_like_simulated():
    rng = np.random.default_rng(9)
    x, w, b, dy = _data(rng, 32, 32, 16, outliers=False)
    dy[3, 5] = np.nan
    packed, simulated = _pair("nvfp4")
    (_, dxp, dwp, _), sp = _run(packed, x, w, b, dy)
    (_, dxs, dws, _), _ = _run(simulated, x, w, b, dy, seed=sp.gradient_seed)
    assert np.array_equal(np.isnan(dxp), np.isnan(dxs)) and np.isnan(dxp).any()
    assert np.array_equal(np.isnan(dwp), np.isnan(dws)) and np.isnan(dwp).any()


@pytest.mark.parametrize("name", ["fp32", "fp8"])
def test_recipes_without_fp4_gemm_operands_are_unchanged(name):
    # fp32 and fp8 have no FP4 operands.
    rng = np.random.default_rng(4)
    x, w, b, dy = _data(rng, 32, 64, 32)
    packed, simulated = _pair(name)
    (outs_p, sp) = _run(packed, x, w, b, dy)
    (outs_s, _) = _run(simulated, x, w, b, dy, seed=sp.gradient_seed)
    for p, s in zip(outs_p, outs_s):
        assert p.tobytes() == s.tobytes()


def test_packed_layer_is_thread_and_path_independent():
    rng = np.random.default_rng(5)
    x, w, b, dy = _data(rng, 96, 128, 64)
    before = f4.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            f4.set_num_threads(threads)
            for name in ("wang2025", "nvfp4"):
                (o, _) = _run(f4.Recipe.get(name), x, w, b, dy, seed=123)
                outs.append((threads, name, o))
    finally:
        f4.set_num_threads(before)
    for name in ("wang2025", "nvfp4"):
        a, c = [o for t, n, o in outs if n == name]
        for u, v in zip(a, c):
            assert u.tobytes() == v.tobytes()


def test_default_recipes_are_packed():
    for name in f4.recipes():
        assert f4.Recipe.get(name).gemm == "packed"
    with pytest.raises(ValueError, match="gemm"):
        f4.Recipe.get("wang2025").replace(gemm="fast")
