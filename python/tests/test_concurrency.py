"""Thread safety of the kernels and of the per-thread last-error text.

ctypes releases the GIL during each call, so these threads really run the Swift kernels
at the same time (each kernel also uses its own worker pool).
"""
from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fp4swift as f4
from fp4swift import _native

THREADS = 8
ROUNDS = 6


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((64, 96)).astype(np.float32)
    x[3, 5] = 40.0  # an outlier for OCC
    w = (rng.standard_normal((48, 96)) / 10).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    dy = rng.standard_normal((64, 48)).astype(np.float32)
    for a in (x, w, b, dy):
        a.setflags(write=False)  # shared, read-only
    return x, w, b, dy


def _work(x, w, b, dy, i):
    """Every kernel family once; i varies the seed so threads do not all compute the same thing."""
    seed = 1000 + i % 4
    qt = f4.quantize(x, "e2m1", "block(32)", "e8m0")
    out = {
        "fq_stochastic": f4.fake_quantize(x, "e2m1", "row", "absmax", "stochastic", seed=seed),
        "fq_nvfp4": f4.fake_quantize(x, "e2m1", "block(16)", "nvfp4"),
        "q_codes": qt.codes,
        "q_deq": qt.dequantize(),
        "dge": f4.dge_derivative(x),
        "occ": f4.occ(x, 0.97)[0],
    }
    for recipe in ("wang2025", "fp4-direct", "fp32"):
        y, saved = f4.linear_forward(x, w, b, recipe)
        dx, dw, db = f4.linear_backward(dy, saved)
        out.update({f"{recipe}_y": y, f"{recipe}_dx": dx, f"{recipe}_dw": dw, f"{recipe}_db": db})
    return out


def test_threads_match_serial(inputs):
    x, w, b, dy = inputs
    serial = [_work(x, w, b, dy, i) for i in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in range(ROUNDS):
            parallel = list(pool.map(lambda i: _work(x, w, b, dy, i), range(THREADS)))
            for i in range(THREADS):
                for key, ref in serial[i].items():
                    assert np.array_equal(parallel[i][key], ref), f"thread {i}: {key} differs from the serial result"
    # different seeds really give different stochastic draws (the comparison above is not vacuous)
    assert not np.array_equal(serial[0]["fq_stochastic"], serial[1]["fq_stochastic"])


def test_last_error_is_per_thread(inputs):
    """Threads alternate failing and succeeding calls; each sees only its own error text."""
    x = inputs[0]
    barrier = threading.Barrier(THREADS)
    problems: list = []

    def worker(t: int) -> None:
        # a distinctive failure per thread, raised by the library itself (not the Python checks)
        q = _native.Quantizer(0, _native.GRANULARITY_BLOCK, 7 + 2 * t, 0, 0, 0, 0)
        out = np.empty(x.shape, dtype=np.float32)
        bad = _native.ctypes.c_int64()
        barrier.wait()
        for r in range(300):
            if (r + t) % 2:
                status = _native.lib.fp4swift_fake_quantize(
                    x.ctypes.data_as(_native.f32p), x.shape[0], x.shape[1], _native.ctypes.byref(q),
                    out.ctypes.data_as(_native.f32p), _native.ctypes.byref(bad))
                msg = _native.last_error()
                if status != _native.INVALID_ARGUMENT or str(7 + 2 * t) not in msg:
                    problems.append((t, r, status, msg))
            else:
                try:
                    f4.fidelity(x, x)
                    f4.quantize(x)
                except Exception as e:  # pragma: no cover - would be a failure below
                    problems.append((t, r, "raised", repr(e)))
            # Python-level exceptions carry the thread's own message too
            if r % 50 == 0:
                with pytest.raises(f4.FP4ValueError) as err:
                    f4.fake_quantize(x, granularity="block", block=7 + 2 * t)
                if str(7 + 2 * t) not in str(err.value):
                    problems.append((t, r, "exception", str(err.value)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not problems, problems[:5]


def test_error_message_of_one_thread_is_not_seen_by_another(inputs):
    """A thread that never failed reads an empty last error while others fail."""
    x = inputs[0]
    stop = threading.Event()

    def failer():
        while not stop.is_set():
            try:
                f4.fake_quantize(x, granularity="block", block=7)
            except f4.FP4ValueError:
                pass

    def clean():
        seen = []
        for _ in range(2000):
            f4.fidelity(x, x)
            msg = _native.last_error()
            if msg:
                seen.append(msg)
        return seen

    with ThreadPoolExecutor(THREADS) as pool:
        fails = [pool.submit(failer) for _ in range(THREADS - 1)]
        try:
            seen = pool.submit(clean).result()
        finally:
            stop.set()
        for f in fails:
            f.result()
    assert seen == []
