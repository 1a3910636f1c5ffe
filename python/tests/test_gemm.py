"""f4.gemm: the GEMM on packed FP4 codes (docs/numerics.md §11).

Reference: the float64 product of the dequantized operands. Bound (§11):
|C − C64| ≤ (G + 5)·2⁻²⁴·Σₖ|âₖ·b̂ₖ| + G·2⁻¹⁴⁹ with G scale groups along K.
Every ISA path this CPU runs must give the same bits, for any thread count.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fp4swift as f4

PATHS = f4.gemm_paths()
U = 2.0 ** -24

# (granularity, scale_rule, block) of operands whose scales are constant along K groups.
LAYOUTS = [
    ("tensor", "absmax", None),
    ("row", "absmax", None),
    ("row", "pow2", None),
    ("block", "absmax", 16),
    ("block", "absmax", 32),
    ("block", "e8m0", 32),
    ("block", "nvfp4", 16),
    ("block", "absmax_div3", 32),
    ("block", "quest", 32),
]


def _dequant64(t: f4.QuantizedTensor) -> np.ndarray:
    rows = t.shape[0] if len(t.shape) > 1 else 1
    return t.dequantize().astype(np.float64).reshape(rows, t.shape[-1])


def _groups(a: f4.QuantizedTensor, b: f4.QuantizedTensor, K: int) -> int:
    def length(t):
        return t.spec.block if t.spec.granularity in ("block", "block2d") else K
    return K // min(length(a), length(b)) if K else 0


def _check(a: f4.QuantizedTensor, b: f4.QuantizedTensor, path=None) -> np.ndarray:
    c = f4.gemm(a, b, path=path)
    A, B = _dequant64(a), _dequant64(b)
    ref = A @ B.T
    bound = (_groups(a, b, A.shape[1]) + 5) * U * (np.abs(A) @ np.abs(B).T) + 1e-44
    err = np.abs(c.astype(np.float64) - ref)
    assert c.dtype == np.float32 and c.shape == ref.shape
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    return c


def _pair(rng, M, N, K, fmt_a="e2m1", fmt_b="e2m1", layout_a=("row", "absmax", None), layout_b=None, heavy=False):
    layout_b = layout_b or layout_a
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K)).astype(np.float32)
    if heavy:
        a *= rng.standard_t(2, size=(M, K)).astype(np.float32)
        b *= np.exp(rng.standard_normal((N, 1)) * 3).astype(np.float32)
    ga, ra, ka = layout_a
    gb, rb, kb = layout_b
    return (f4.quantize(a, fmt_a, granularity=ga, scale_rule=ra, block=ka),
            f4.quantize(b, fmt_b, granularity=gb, scale_rule=rb, block=kb))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l[0]}-{l[1]}-{l[2]}")
@pytest.mark.parametrize("fmt", ["e2m1", "e1m2", "e3m0"])
def test_every_layout_and_format_within_bound_and_paths_agree(layout, fmt):
    try:
        f4.quantize(np.ones((1, 32), np.float32), fmt, granularity=layout[0], scale_rule=layout[1], block=layout[2])
    except ValueError as e:
        pytest.skip(f"not a valid quantizer: {e}")
    rng = np.random.default_rng(hash((layout, fmt)) % 2**32)
    for M, N, K in [(1, 1, 32), (7, 33, 64), (13, 70, 96), (65, 17, 160)]:
        a, b = _pair(rng, M, N, K, fmt, fmt, layout, heavy=M > 10)
        outs = [_check(a, b, p) for p in PATHS]
        for o in outs[1:]:
            assert o.tobytes() == outs[0].tobytes()


@pytest.mark.parametrize("M,N,K", [(0, 5, 8), (5, 0, 8), (3, 4, 0), (1, 1, 1), (2, 3, 3), (5, 7, 37),
                                   (6, 32, 4), (7, 33, 5), (31, 15, 129), (12, 48, 255)])
def test_odd_shapes_row_scales(M, N, K):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    a, b = _pair(rng, M, N, K)
    outs = [_check(a, b, p) for p in PATHS]
    for o in outs[1:]:
        assert o.tobytes() == outs[0].tobytes()
    if K == 0:
        assert np.all(outs[0] == 0)


def test_mixed_formats_and_granularities():
    rng = np.random.default_rng(7)
    cases = [
        ("e2m1", "e3m0", ("row", "absmax", None), ("row", "absmax", None)),
        ("e1m2", "e2m1", ("block", "absmax", 32), ("row", "absmax", None)),
        ("e2m1", "e2m1", ("block", "absmax", 16), ("block", "e8m0", 32)),  # 32-blocks nest in 16s
        ("e3m0", "e2m1", ("tensor", "absmax", None), ("block", "nvfp4", 16)),
    ]
    for fa, fb, la, lb in cases:
        a, b = _pair(rng, 9, 40, 64, fa, fb, la, lb)
        outs = [_check(a, b, p) for p in PATHS]
        for o in outs[1:]:
            assert o.tobytes() == outs[0].tobytes()


def test_block2d_weights_nvfp4():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    qx = f4.quantize(x, "e2m1", granularity="block", scale_rule="nvfp4", block=16)
    qw = f4.quantize(w, "e2m1", granularity="block2d", scale_rule="nvfp4", block=16)
    for p in PATHS:
        _check(qx, qw, p)


def test_extreme_codes_long_k():
    # Every product at the grid's maximum: the integer sums are as large as they get.
    for fmt, K in [("e2m1", 8192), ("e1m2", 8192), ("e3m0", 4096)]:
        a = np.full((3, K), 6.0, dtype=np.float32)
        a[1] *= -1
        a[2, ::2] *= -1
        b = np.full((5, K), 6.0, dtype=np.float32)
        b[3] *= -1
        qa = f4.quantize(a, fmt, granularity="tensor", scale_rule="pow2")
        qb = f4.quantize(b, fmt, granularity="tensor", scale_rule="pow2")
        for p in PATHS:
            _check(qa, qb, p)


def test_ties_zero_and_signed_zero():
    a = np.array([[0.25, 0.75, -1.25, 1.75, 2.5, -3.5, 5.0, -0.0] * 4], dtype=np.float32)
    b = np.array([[1.0, -1.0, 0.5, 0.0, -0.0, 6.0, -6.0, 3.0] * 4, [0.0] * 32], dtype=np.float32)
    qa = f4.quantize(a, granularity="tensor", scale_rule="pow2")
    qb = f4.quantize(b, granularity="row", scale_rule="absmax")
    for p in PATHS:
        c = _check(qa, qb, p)
        assert c[0, 1] == 0.0


def test_thread_count_independent():
    rng = np.random.default_rng(11)
    a, b = _pair(rng, 130, 200, 256, layout_a=("block", "e8m0", 32))
    before = f4.get_num_threads()
    try:
        f4.set_num_threads(1)
        one = f4.gemm(a, b)
        f4.set_num_threads(2)
        two = f4.gemm(a, b)
        f4.set_num_threads(3)
        three = f4.gemm(a, b)
    finally:
        f4.set_num_threads(before)
    assert one.tobytes() == two.tobytes() == three.tobytes()


def test_scale_bytes_and_float_scales_agree():
    # e8m0 and nvfp4 tensors carry their stored bytes; the GEMM decodes them to the same floats.
    rng = np.random.default_rng(5)
    for rule, block in [("e8m0", 32), ("nvfp4", 16)]:
        a, b = _pair(rng, 8, 9, 64, layout_a=("block", rule, block))
        assert a.scales.dtype == np.uint8
        c_bytes = f4.gemm(a, b)
        a2 = f4.QuantizedTensor(a.codes, a._float_scales, a.shape, a.fmt,
                                f4.QuantizerSpec.make(a.fmt, "block", "absmax", "nearest_even", block, 0, "raise"),
                                1.0, a._float_scales)
        if rule == "e8m0":  # an absmax-described operand with the same float scales multiplies alike
            b2 = f4.QuantizedTensor(b.codes, b._float_scales, b.shape, b.fmt, a2.spec, 1.0, b._float_scales)
            assert f4.gemm(a2, b2).tobytes() == c_bytes.tobytes()


def test_one_dimensional_operands_are_rows():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(64).astype(np.float32)
    w = rng.standard_normal((10, 64)).astype(np.float32)
    qx, qw = f4.quantize(x), f4.quantize(w)
    c = f4.gemm(qx, qw)
    assert c.shape == (1, 10)


def test_path_names():
    assert PATHS[0] == "generic"
    assert f4.gemm_path() in PATHS
    assert set(PATHS) <= {"generic", "avx2", "avx512vnni"}


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_environment_variable_forces_a_path():
    for p in PATHS:
        r = _run("import fp4swift as f4; print(f4.gemm_path())", FP4SWIFT_GEMM_ISA=p)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == p
    code = ("import numpy as np, fp4swift as f4\n"
            "q = f4.quantize(np.ones((2, 8), np.float32))\n"
            "try:\n    f4.gemm(q, q)\nexcept ValueError as e:\n    print('ValueError', e)\n")
    r = _run(code, FP4SWIFT_GEMM_ISA="sse9")
    assert r.returncode == 0, r.stderr
    assert "ValueError" in r.stdout and "FP4SWIFT_GEMM_ISA" in r.stdout


def test_cached_cpu_features_keep_every_path_selectable_in_one_process():
    # The CPU feature bits are read once per process (fp4isa_cpu_has caches them: cpuid costs
    # microseconds under a hypervisor); FP4SWIFT_GEMM_ISA is still read on every call, so one
    # process can switch paths after the first GEMM, from several threads, with the same product.
    code = ("import os, numpy as np, fp4swift as f4\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "rng = np.random.default_rng(0)\n"
            "q = f4.quantize(rng.standard_normal((64, 64)).astype(np.float32), fmt='e2m1', granularity='block', "
            "scale_rule='e8m0', block=32)\n"
            "ref = f4.gemm(q, q)\n"
            "for p in f4.gemm_paths():\n"
            "    os.environ['FP4SWIFT_GEMM_ISA'] = p\n"
            "    assert f4.gemm_path() == p, (p, f4.gemm_path())\n"
            "    with ThreadPoolExecutor(4) as ex:\n"
            "        outs = list(ex.map(lambda _: f4.gemm(q, q), range(8)))\n"
            "    assert all(np.array_equal(o, ref) for o in outs), p\n"
            "print('ok', len(f4.gemm_paths()))\n")
    env = {k: v for k, v in os.environ.items() if k != "FP4SWIFT_GEMM_ISA"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_bad_input_raises():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    q = f4.quantize(x)
    with pytest.raises(TypeError):
        f4.gemm(x, q)
    with pytest.raises(ValueError, match="same K"):
        f4.gemm(q, f4.quantize(rng.standard_normal((4, 16)).astype(np.float32)))
    with pytest.raises(ValueError, match="FP4"):
        f4.gemm(q, f4.quantize(x, "e4m3"))
    with pytest.raises(ValueError, match="column"):
        f4.gemm(q, f4.quantize(x, granularity="column"))
    with pytest.raises(ValueError, match="path"):
        f4.gemm(q, q, path="sse9")
    b48 = f4.quantize(rng.standard_normal((4, 96)).astype(np.float32), granularity="block", block=48)
    b32 = f4.quantize(rng.standard_normal((4, 96)).astype(np.float32), granularity="block", block=32)
    with pytest.raises(ValueError, match="nest"):
        f4.gemm(b48, b32)
    # Tampered saved state: too few scales, too few codes, a NaN scale byte.
    short = f4.QuantizedTensor(q.codes, q.scales[:2], q.shape, q.fmt, q.spec, 1.0, q._float_scales[:2])
    with pytest.raises(ValueError, match="scales"):
        f4.gemm(short, q)
    cut = f4.QuantizedTensor(q.codes[:5], q.scales, q.shape, q.fmt, q.spec, 1.0, q._float_scales)
    with pytest.raises(ValueError, match="codes"):
        f4.gemm(cut, q)
    mx = f4.quantize(x, granularity="block", scale_rule="e8m0", block=32)
    nan_bytes = mx.scales.copy()
    nan_bytes[0, 0] = 255
    bad = f4.QuantizedTensor(mx.codes, nan_bytes, mx.shape, mx.fmt, mx.spec, 1.0, mx._float_scales)
    with pytest.raises(ValueError, match="NaN"):
        f4.gemm(bad, mx)
    if "avx512vnni" not in PATHS:
        with pytest.raises(ValueError, match="does not support"):
            f4.gemm(q, q, path="avx512vnni")
