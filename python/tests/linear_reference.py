"""Independent float64 numpy references for DGE, OCC and the FP4 linear layer (numerics.md §4–6).

Nothing here calls fp4swift. Quantized operands come from reference.ref_quantize (the
float32 quantizer written from numerics.md §2); everything after quantization (DGE factor, OCC
order statistics, the GEMMs) is evaluated in float64 straight from the spec's formulas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from reference import MAGS, ref_quantize

F32 = np.float32

# ---------------------------------------------------------------------------
# DGE (numerics.md §4)
# ---------------------------------------------------------------------------


FP4_MAX = {"e2m1": 6.0, "e1m2": 3.5, "e3m0": 16.0}


def dge_interval(v, fmt: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(|v|, a, δ) in float64: the grid interval [a, a+δ) holding |v|; the last interval is
    closed (|v| = max lies in [g6, max]). |v| > max still gets the last interval (masked by
    the callers)."""
    g = MAGS[fmt]
    a = np.abs(np.asarray(v, dtype=np.float64))
    i = np.clip(np.searchsorted(g, a, side="right") - 1, 0, len(g) - 2)
    return a, g[i], g[i + 1] - g[i]


def ref_dge_derivative(v, fmt: str = "e2m1", k: float = 5.0, clamp: float = 3.0) -> np.ndarray:
    """f'(v) = min((1/k)·|2x/δ − 1|^(1/k − 1), C), x = |v| − a; 0 for |v| > max (float64).

    At an interval midpoint (|2x/δ − 1| = 0) the power is +inf for k > 1 (so f' = C), 0 for
    k < 1 and 1 for k = 1 (numpy's 0**0)."""
    a, lo, d = dge_interval(v, fmt)
    t = np.abs(2.0 * (a - lo) / d - 1.0)
    with np.errstate(divide="ignore"):
        fp = (1.0 / k) * np.power(t, 1.0 / k - 1.0)
    fp = np.minimum(fp, clamp)
    return np.where(a > MAGS[fmt][-1], 0.0, fp)


def ref_dge_surrogate(v, fmt: str = "e2m1", k: float = 5.0) -> np.ndarray:
    """sign(v)·(a + (δ/2)(1 + sign(t)|t|^(1/k))), t = 2x/δ − 1, |v| clipped to max (float64)."""
    m = MAGS[fmt][-1]
    vv = np.asarray(v, dtype=np.float64)
    a, lo, d = dge_interval(np.minimum(np.abs(vv), m), fmt)
    t = 2.0 * (a - lo) / d - 1.0
    f = (d / 2.0) * (1.0 + np.sign(t) * np.abs(t) ** (1.0 / k))
    return np.copysign(lo + f, vv)


# ---------------------------------------------------------------------------
# OCC (numerics.md §5)
# ---------------------------------------------------------------------------


def occ_indices(n: int, alpha: float) -> Tuple[int, int]:
    """lo = floor((1 − α)·n), hi = min(floor(α·n), n − 1), the formula in float64."""
    lo = int(math.floor((1.0 - alpha) * n))
    hi = min(int(math.floor(alpha * n)), n - 1)
    return lo, hi


def ref_occ_thresholds(x2: np.ndarray, alpha: float, per: str) -> Tuple[np.ndarray, np.ndarray]:
    """Thresholds of a [rows, cols] float32 matrix by a full sort (per tensor: 1 group)."""
    x2 = np.asarray(x2, dtype=np.float32)
    if per == "row":
        s = np.sort(x2, axis=1)
        lo_i, hi_i = occ_indices(x2.shape[1], alpha)
        return s[:, lo_i].copy(), s[:, hi_i].copy()
    s = np.sort(x2.reshape(-1))
    lo_i, hi_i = occ_indices(s.size, alpha)
    return np.array([s[lo_i]], dtype=F32), np.array([s[hi_i]], dtype=F32)


def ref_occ(x2: np.ndarray, alpha: float, per: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_c, ΔX, lo, hi) of a [rows, cols] float32 matrix; ΔX = X − X_c in float32."""
    x2 = np.asarray(x2, dtype=np.float32)
    lo, hi = ref_occ_thresholds(x2, alpha, per)
    lo_b, hi_b = (lo[:, None], hi[:, None]) if per == "row" else (lo[0], hi[0])
    xc = np.minimum(np.maximum(x2, lo_b), hi_b).astype(F32)
    return xc, (x2 - xc).astype(F32), lo, hi


# ---------------------------------------------------------------------------
# The linear layer (numerics.md §6)
# ---------------------------------------------------------------------------


@dataclass
class LinearConfig:
    """A recipe spelled out for the reference (independent of fp4swift.Recipe)."""

    quantized: bool = True  # False: the fp32 recipe
    fmt: str = "e2m1"
    x_gran: str = "row"
    w_gran: str = "row"
    occ: bool = True
    alpha: float = 0.99
    occ_per: str = "tensor"
    compensate: bool = True
    dge: bool = True
    k: float = 5.0
    clamp: float = 3.0
    grad_fp8: bool = False


WANG2025 = LinearConfig()
FP4_DIRECT = LinearConfig(x_gran="tensor", w_gran="tensor", occ=False, dge=False)
FP32 = LinearConfig(quantized=False, occ=False, dge=False)


class RefLinear:
    """Forward and backward of one call, float64 GEMMs on the spec's quantized operands."""

    def __init__(self, x, w, b, cfg: LinearConfig):
        self.cfg = cfg
        x = np.asarray(x, dtype=F32)
        self.x_shape = x.shape
        K = x.shape[-1]
        X = x.reshape(-1, K)
        W = np.asarray(w, dtype=F32)
        self.W = W
        self.b = None if b is None else np.asarray(b, dtype=F32)
        self.X = X
        if not cfg.quantized:
            self.x_op = X.astype(np.float64)  # the forward operand, and the saved X of the backward
            self.w_op = W.astype(np.float64)
            self.xq = None
            self.wq_ref = None
            self.delta = np.zeros_like(X)
            self.lo = self.hi = None
        else:
            if cfg.occ:
                xc, delta, self.lo, self.hi = ref_occ(X, cfg.alpha, cfg.occ_per)
            else:
                xc, delta, self.lo, self.hi = X, np.zeros_like(X), None, None
            self.xc = xc
            self.delta = delta if (cfg.occ and cfg.compensate) else np.zeros_like(X)
            self.xq = ref_quantize(xc, fmt=cfg.fmt, granularity=cfg.x_gran, scale_rule="absmax")
            self.wq_ref = ref_quantize(W, fmt=cfg.fmt, granularity=cfg.w_gran, scale_rule="absmax")
            # X_q (+ ΔX): the activation operand of the forward GEMM and of the dW GEMM.
            self.x_op = self.xq.xhat.astype(np.float64) + self.delta.astype(np.float64)
            self.w_op = self.wq_ref.xhat.astype(np.float64)

    def forward(self) -> np.ndarray:
        y = self.x_op @ self.w_op.T
        if self.b is not None:
            y = y + self.b.astype(np.float64)
        return y.reshape(self.x_shape[:-1] + (self.W.shape[0],))

    def dge_factor(self) -> np.ndarray:
        """f'(W / s_w) with v = W / s_w divided in float32 exactly as the quantizer does."""
        cfg = self.cfg
        N, K = self.W.shape
        s = self.wq_ref.scales.scale.astype(F32)
        if cfg.w_gran == "row":
            s_el = np.repeat(s, K).reshape(N, K)
        else:
            assert cfg.w_gran == "tensor"
            s_el = np.full((N, K), s[0], dtype=F32)
        v = (self.W / s_el).astype(F32)
        # absmax scales put every |W| <= amax on the grid's range; a |v| just above fmax is
        # float rounding of the scale (e1m2: 3.5000002), not clipping, so it counts as fmax.
        fmax = np.float32(FP4_MAX[cfg.fmt])
        v = np.clip(v, -fmax, fmax)
        return ref_dge_derivative(v, cfg.fmt, cfg.k, cfg.clamp)

    def backward(self, dy) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        cfg = self.cfg
        N = self.W.shape[0]
        D = np.asarray(dy, dtype=F32).reshape(-1, N)
        G = D
        if cfg.quantized and cfg.grad_fp8:
            G = ref_quantize(D, fmt="e5m2", granularity="tensor", scale_rule="pow2").xhat
        G = G.astype(np.float64)
        dx = (G @ self.w_op).reshape(self.x_shape)
        dw = G.T @ self.x_op
        if cfg.quantized and cfg.dge:
            dw = dw * self.dge_factor()
        db = D.astype(np.float64).sum(axis=0) if self.b is not None else None
        return dx, dw, db


def rel_err(got, ref) -> float:
    """max|got − ref| / max|ref| (0 when both are all zero)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != {ref.shape}"
    if got.size == 0:
        return 0.0
    den = np.max(np.abs(ref))
    num = np.max(np.abs(got - ref))
    if den == 0:
        return float(num)
    return float(num / den)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Element 2i from the low nibble, 2i+1 from the high nibble (numerics.md §1 packing)."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty(2 * p.size, dtype=np.uint8)
    out[0::2] = p & 0x0F
    out[1::2] = p >> 4
    return out[:count]


def decode_fp4(codes: np.ndarray, fmt: str) -> np.ndarray:
    """float64 values of FP4 sign-magnitude codes (bit 3 sign, bits 0-2 magnitude)."""
    c = np.asarray(codes, dtype=np.int64)
    mag = MAGS[fmt][c & 7]
    return np.where(c & 8, -mag, mag)


CONFIG_NAMES: Dict[str, LinearConfig] = {"wang2025": WANG2025, "fp4-direct": FP4_DIRECT, "fp32": FP32}
