"""Thread budgets of a recipe's training steps: torch's pool for fp32, the Swift core's and
OpenBLAS's for FP4 recipes, never both parallel at once."""
from __future__ import annotations

import os

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
    fp32 runs torch on n threads; FP4 recipes run the Swift core and its OpenBLAS on n threads,
    and torch (attention, norms, the LM head) on n too when OpenMP waits passively
    (OMP_WAIT_POLICY=PASSIVE, which `fp4swift train` sets before torch loads), else on one. On a
    2-core machine torch's spinning OpenMP workers and OpenBLAS's fought over the cores and made
    FP4 steps ~1.5x slower than either alone; with passive waiting, torch on 2 threads made
    quartet and mxfp4 steps at d_model 512 about 10% faster than torch on 1.
    Returns a description for the log."""
    if not fp4:
        torch.set_num_threads(n)
        return describe_threads(n, fp4=False)
    import fp4swift as f4

    t = fp4_torch_threads(n)
    torch.set_num_threads(t)
    f4.set_num_threads(n)
    _openblas_set_threads(n)
    return describe_threads(n, fp4=True)


def fp4_torch_threads(n: int) -> int:
    """torch's threads under an FP4 recipe: n when OpenMP waits passively, else 1."""
    return n if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE" else 1


def describe_threads(n: int, fp4: bool) -> str:
    """What `configure_threads(n, fp4)` sets, for the log."""
    return f"Swift core + OpenBLAS {n}, torch {fp4_torch_threads(n)}" if fp4 else f"torch {n}"
