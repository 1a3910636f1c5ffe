"""Memory: 10,000 calls of every main entry point keep the process RSS flat, and the saved
state of the linear layer is freed with its LinearSaved object.

The RSS measurement runs in a child process (`python test_leaks.py`), so pytest's own
allocations do not blur it. Bound: RSS growth after warm-up < GROWTH_MB per entry point
(a leak of one 64-byte buffer per call would already show up as +0.6 MB; the bound leaves
room for allocator noise, not for a per-call leak of the inputs, which are 4–16 KB).
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
import warnings
import weakref

import numpy as np

import fp4swift as f4

HERE = os.path.dirname(os.path.abspath(__file__))
CALLS = 10_000
WARMUP = 500
GROWTH_MB = 10.0


def test_rss_flat_over_10000_calls_per_entry_point():
    proc = subprocess.run([sys.executable, os.path.join(HERE, "test_leaks.py")], cwd=HERE, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"leak child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    growth = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(growth) >= 15
    over = {k: v for k, v in growth.items() if v >= GROWTH_MB}
    assert not over, f"RSS grew by ≥ {GROWTH_MB} MB over {CALLS} calls: {over} (all: {growth})"


def test_saved_state_is_freed_with_its_object():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    x[0, 0] = 50.0
    w = rng.standard_normal((16, 64)).astype(np.float32)
    _, saved = f4.linear_forward(x, w, None, "wang2025")
    assert saved.residual_nnz > 0
    buffers = [saved.x_codes, saved.x_scales, saved.residual_indptr, saved.residual_indices, saved.residual_values]
    refs = [weakref.ref(a) for a in buffers]
    saved_ref = weakref.ref(saved)
    del buffers, saved
    gc.collect()
    assert saved_ref() is None
    assert all(r() is None for r in refs), "a saved-state buffer outlived its LinearSaved"

    # released after a backward: the buffers go at once, before the object itself
    _, saved = f4.linear_forward(x, w, None, "wang2025")
    refs = [weakref.ref(a) for a in (saved.x_codes, saved.x_scales, saved.residual_values)]
    f4.linear_backward(np.ones((32, 16), np.float32), saved)
    gc.collect()
    assert all(r() is None for r in refs)
    assert saved.nbytes == 0


def test_saved_state_memory_returns_to_baseline_tracemalloc():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    w = rng.standard_normal((64, 512)).astype(np.float32)
    f4.linear_forward(x, w, None, "wang2025")  # warm-up (lazy imports, caches)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keep = [f4.linear_forward(x, w, None, "wang2025")[1] for _ in range(20)]
        held = tracemalloc.get_traced_memory()[0] - base
        per = keep[0].nbytes
        assert held >= 20 * per * 0.9, (held, per)  # the buffers are numpy memory Python tracks
        del keep
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert left < 64 * 1024, f"{left} bytes still allocated after the LinearSaved objects died"


# ---------------------------------------------------------------------------------------
# The child: RSS per entry point.


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _entry_points():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    x[1, 2] = 30.0
    w = (rng.standard_normal((32, 64)) / 8).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    dy = rng.standard_normal((16, 32)).astype(np.float32)
    codes = f4.encode(np.clip(x, -6, 6), "e2m1")
    packed = f4.pack_fp4(codes)
    qt = f4.quantize(x, "e2m1", "block(16)", "nvfp4")
    _, res = f4.occ(x, 0.97)
    nan_x = x.copy()
    nan_x[0, 0] = np.nan

    def linear(recipe):
        def run():
            y, saved = f4.linear_forward(x, w, b, recipe)
            f4.linear_backward(dy, saved)
        return run

    def failing():
        for call in (lambda: f4.fake_quantize(x, granularity="block", block=7),
                     lambda: f4.quantize(nan_x),
                     lambda: f4.encode(nan_x, "e2m1"),
                     lambda: f4.linear_forward(nan_x, w, b, "wang2025")):
            try:
                call()
            except (ValueError, TypeError):
                pass

    points = {
        "encode": lambda: f4.encode(np.clip(x, -6, 6), "e2m1"),
        "decode": lambda: f4.decode(codes, "e2m1"),
        "pack_unpack": lambda: f4.unpack_fp4(f4.pack_fp4(codes), codes.size),
        "fake_quantize": lambda: f4.fake_quantize(x, rounding="stochastic", seed=3),
        "fake_quantize_nan": lambda: f4.fake_quantize(nan_x),
        "quantize": lambda: f4.quantize(x, "e2m1", "block(32)", "e8m0"),
        "dequantize": lambda: qt.dequantize(),
        "fidelity": lambda: f4.fidelity(x, x),
        "dge_derivative": lambda: f4.dge_derivative(x),
        "dge_surrogate": lambda: f4.dge_surrogate(x),
        "occ": lambda: f4.occ(x, 0.97),
        "occ_thresholds": lambda: f4.occ_thresholds(x, 0.97, "row"),
        "csr_matmul_t": lambda: f4.csr_matmul_t(res, w),
        "linear_wang2025": linear("wang2025"),
        "linear_fp4_direct": linear("fp4-direct"),
        "linear_fp32": linear("fp32"),
        "linear_forward_only": lambda: f4.linear_forward(x, w, b, "wang2025"),
        "errors": failing,
    }
    try:
        import torch

        import fp4swift.torch as f4t

        layer = f4t.FP4Linear(64, 32, recipe="wang2025")
        xt = torch.from_numpy(x)

        def torch_step():
            xi = xt.clone().requires_grad_(True)
            layer(xi).sum().backward()
            layer.zero_grad(set_to_none=True)

        points["torch_FP4Linear"] = torch_step
    except ImportError:  # pragma: no cover
        pass
    return points


def main() -> int:
    warnings.simplefilter("ignore")
    growth = {}
    for name, fn in _entry_points().items():
        for _ in range(WARMUP):
            fn()
        gc.collect()
        before = _rss_mb()
        for _ in range(CALLS):
            fn()
        gc.collect()
        growth[name] = round(_rss_mb() - before, 3)
        print(f"{name}: {growth[name]:+.3f} MB over {CALLS} calls", flush=True)
    print(json.dumps(growth), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
