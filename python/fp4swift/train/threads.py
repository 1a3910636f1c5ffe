"""Thread budgets of a recipe's training steps: torch's pool for fp32, the Swift core's and
OpenBLAS's for FP4 recipes, never both parallel at once."""
from __future__ import annotations

import torch


def default_threads() -> int:
    """1. On this project's 2-core machine, torch's OpenMP pool on 2 threads ran a training step
    17x slower as soon as one other process competed for a core (its barrier waits for the
    descheduled worker), while one thread degrades gracefully. One thread per recipe also makes
    tokens/s a per-core comparison. Use --threads N on an otherwise idle machine."""
    return 1


def _openblas_set_threads(n: int) -> bool:
    """openblas_set_num_threads on the OpenBLAS the Swift core links (already loaded). False if absent."""
    import ctypes

    for name in ("libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"):
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_set_num_threads(ctypes.c_int(int(n)))
            return True
        except (OSError, AttributeError):
            continue
    return False


def configure_threads(n: int, fp4: bool) -> str:
    """Gives a recipe the thread budget n for its GEMMs without two pools fighting over the cores:
    fp32 runs torch on n threads; FP4 recipes run the Swift core and its OpenBLAS on n threads
    and torch (attention, norms, the LM head) on one. On a 2-core machine torch's OpenMP workers
    and OpenBLAS's both spin-wait between calls, and running both parallel made FP4 steps ~1.5x
    slower than either alone. Returns a description for the log."""
    if not fp4:
        torch.set_num_threads(n)
        return f"torch {n}"
    import fp4swift as f4

    torch.set_num_threads(1)
    f4.set_num_threads(n)
    _openblas_set_threads(n)
    return f"Swift core + OpenBLAS {n}, torch 1"
