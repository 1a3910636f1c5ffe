"""Packed FP4 GEMM (f4.gemm) against float32 sgemm on the same shape, timed in one run.

    python benchmarks/gemm.py [--size 4096 | --m M --n N --k K] [--threads 2] [--repeats 5]
                              [--paths avx512vnni,avx2,generic]

C = A·Bᵀ with A [M, K], B [N, K]. Operands are quantized once before timing (the GEMM
call includes unpacking the codes into the kernels' panels, not the quantization).
Baselines: OpenBLAS cblas_sgemm from the system library fp4swift links (the fp32 recipe's
GEMM) and numpy's matmul (its bundled OpenBLAS), both on float32 operands with the same
thread count. Speedup = sgemm time / FP4 time (higher is better).

Targets (issue: real FP4 arithmetic), 4096³, 2 threads: row scales >= 3x on AVX-512 VNNI
(>= 1.3x on AVX2); block-32 e8m0 >= 2.5x (AVX2 >= 1.2x); nvfp4 block 16 >= 2x.
If oneDNN (Debian's libdnnl) is installed, its int8 GEMM dnnl_gemm_s8s8s32 on the same
shape is printed as this machine's int8 ceiling (a reference only, not a dependency).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians, print_table  # noqa: E402

import fp4swift as f4  # noqa: E402

LAYOUTS = {
    # name: quantize() arguments of both operands (the recipes that use the layout)
    "row absmax (wang2025, fp4-direct)": dict(granularity="row", scale_rule="absmax"),
    "block32 e8m0 (mxfp4)": dict(granularity="block", scale_rule="e8m0", block=32),
    "block32 quest/absmax (quartet-like)": dict(granularity="block", scale_rule="absmax", block=32),
    "block16 nvfp4 (nvfp4)": dict(granularity="block", scale_rule="nvfp4", block=16),
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _system_sgemm(threads: int):
    """cblas_sgemm of the system OpenBLAS (the library fp4swift's float32 GEMMs call)."""
    name = ctypes.util.find_library("openblas")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.openblas_set_num_threads(threads)
    f32p = ctypes.POINTER(ctypes.c_float)
    lib.cblas_sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_float, f32p, ctypes.c_int, f32p, ctypes.c_int, ctypes.c_float, f32p, ctypes.c_int]

    def run(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        m, k = a.shape
        n = b.shape[0]
        # row-major, C = A · Bᵀ
        lib.cblas_sgemm(101, 111, 112, m, n, k, 1.0, a.ctypes.data_as(f32p), k, b.ctypes.data_as(f32p), k,
                        0.0, c.ctypes.data_as(f32p), n)
    return run


def _onednn_s8(threads: int):
    """oneDNN's dnnl_gemm_s8s8s32, if libdnnl is installed (the int8 ceiling of this machine)."""
    name = ctypes.util.find_library("dnnl")
    if name is None:
        return None
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    lib = ctypes.CDLL(name)
    i8p = ctypes.POINTER(ctypes.c_int8)
    i32p = ctypes.POINTER(ctypes.c_int32)
    lib.dnnl_gemm_s8s8s32.argtypes = [ctypes.c_char, ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_float, i8p, ctypes.c_int64, ctypes.c_int8, i8p,
                                      ctypes.c_int64, ctypes.c_int8, ctypes.c_float, i32p, ctypes.c_int64, i32p]

    def run(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        m, k = a.shape
        n = b.shape[0]
        co = np.zeros(1, dtype=np.int32)
        status = lib.dnnl_gemm_s8s8s32(b"N", b"T", b"F", m, n, k, 1.0, a.ctypes.data_as(i8p), k, 0,
                                       b.ctypes.data_as(i8p), k, 0, 0.0, c.ctypes.data_as(i32p), n,
                                       co.ctypes.data_as(i32p))
        if status != 0:
            raise RuntimeError(f"dnnl_gemm_s8s8s32 failed with status {status}")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="M = N = K (unless --m/--n/--k are given)")
    ap.add_argument("--m", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--k", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paths", default=None, help="comma-separated GEMM paths (default: every path this CPU runs)")
    ap.add_argument("--layouts", default=None, help="comma-separated prefixes of layout names (default: all)")
    args = ap.parse_args()
    M, N, K = args.m or args.size, args.n or args.size, args.k or args.size
    paths = args.paths.split(",") if args.paths else list(reversed(f4.gemm_paths()))
    f4.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((N, K), dtype=np.float32)
    c = np.empty((M, N), dtype=np.float32)
    baselines = {"numpy matmul (float32)": lambda: np.matmul(a, b.T, out=c)}
    sgemm = _system_sgemm(args.threads)
    if sgemm is not None:
        baselines = {"OpenBLAS sgemm (float32)": lambda: sgemm(a, b, c), **baselines}
    dnnl = _onednn_s8(args.threads)
    if dnnl is not None:
        a8 = rng.integers(-12, 13, size=(M, K), dtype=np.int8)
        b8 = rng.integers(-12, 13, size=(N, K), dtype=np.int8)
        c32 = np.empty((M, N), dtype=np.int32)
        baselines["oneDNN gemm_s8s8s32 (int8 ceiling)"] = lambda: dnnl(a8, b8, c32)

    selected = [(name, kw) for name, kw in LAYOUTS.items()
                if args.layouts is None or any(name.startswith(p) for p in args.layouts.split(","))]
    candidates = dict(baselines)
    for name, kw in selected:
        qa, qb = f4.quantize(a, "e2m1", **kw), f4.quantize(b, "e2m1", **kw)
        for p in paths:
            candidates[f"{name} [{p}]"] = (lambda qa=qa, qb=qb, p=p: f4.gemm(qa, qb, path=p))

    times = interleaved_medians(candidates, repeats=args.repeats)
    ref = next(iter(baselines))
    t_ref = times[ref]
    flops = 2.0 * M * N * K
    rows = [(name, f"{t * 1e3:.1f}", f"{flops / t / 1e9:.0f}", f"{t_ref / t:.2f}x") for name, t in times.items()]
    print_table(f"C = A·Bᵀ, M={M} N={N} K={K}, {args.threads} threads, {_cpu_name()}; "
                f"speedup = {ref} time / time (medians of {args.repeats}, interleaved)",
                ["kernel", "median ms", "GFLOP/s (MAC = 2)", "speedup"], rows)


if __name__ == "__main__":
    main()
