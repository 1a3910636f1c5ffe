"""Throughput of the blockwise Hadamard rotation against np.copyto, timed in one run.

    python benchmarks/hadamard.py [--size 4096] [--threads 2] [--repeats 7]

Target (Quartet issue): f4.hadamard(x, block=32) on 4096x4096 float32 >= 0.5x np.copyto
(both read and write 4 bytes per element). Also shows blocks 64/128, signs, in place, and a
numpy implementation (reshape + matmul by H/√b) for reference.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import median_seconds, print_table, square_benchmark  # noqa: E402

import fp4swift as f4  # noqa: E402


def numpy_hadamard(x: np.ndarray, block: int) -> np.ndarray:
    from scipy.linalg import hadamard

    H = (hadamard(block) / np.sqrt(block)).astype(np.float32)
    return (x.reshape(-1, block) @ H).reshape(x.shape)


def main() -> None:
    args, rng, x, out = square_benchmark(__doc__, f4.set_num_threads)
    signs = rng.choice([-1.0, 1.0], size=32).astype(np.float32)

    base = median_seconds(lambda: np.copyto(out, x), args.repeats)
    rows = []

    def add(name: str, fn, target: str = "") -> None:
        t = median_seconds(fn, args.repeats)
        rows.append((name, f"{base / t:.2f}x", target))

    add("hadamard block 32 (out=)", lambda: f4.hadamard(x, 32, out=out), ">= 0.5x")
    add("hadamard block 32, allocating", lambda: f4.hadamard(x, 32))
    add("hadamard block 32 + signs (out=)", lambda: f4.hadamard(x, 32, signs=signs, out=out))
    add("hadamard block 64 (out=)", lambda: f4.hadamard(x, 64, out=out))
    add("hadamard block 128 (out=)", lambda: f4.hadamard(x, 128, out=out))
    buf = x.copy()
    add("hadamard block 32 in place", lambda: f4.hadamard(buf, 32, out=buf))
    try:
        add("numpy: reshape @ H/sqrt(32)", lambda: numpy_hadamard(x, 32))
    except ImportError:
        rows.append(("numpy reference (scipy missing)", "-", ""))
    print_table(f"Throughput relative to np.copyto on {args.size}x{args.size} float32, "
                f"{args.threads} threads (median of {args.repeats})", ["kernel", "vs np.copyto", "target"], rows)


if __name__ == "__main__":
    main()
