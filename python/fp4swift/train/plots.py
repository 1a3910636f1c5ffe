"""The loss-curve figure of a training run (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np


def _ema(values: List[float], beta: float = 0.9) -> np.ndarray:
    out, m = [], None
    for v in values:
        m = v if m is None else beta * m + (1 - beta) * v
        out.append(m)
    return np.asarray(out)


def plot_losses(path: str, curves: Dict[str, List[Dict[str, Any]]], title: str = "") -> Optional[str]:
    """Writes a PNG (atomically) with the training loss (EMA-smoothed) and validation loss of
    every recipe, plus the validation gap to fp32 when fp32 is present. Returns the path, or
    None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    have_ref = "fp32" in curves
    fig, axes = plt.subplots(1, 2 if have_ref else 1, figsize=(13 if have_ref else 7.5, 4.8), squeeze=False)
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ref_val = {}
    if have_ref:
        ref_val = {r["step"]: r["val_loss"] for r in curves["fp32"] if r.get("val_loss") is not None}
    ymax = None
    for i, (name, rows) in enumerate(curves.items()):
        c = colors[i % len(colors)]
        tr = [(r["step"], r["train_loss"]) for r in rows
              if r.get("train_loss") is not None and math.isfinite(r["train_loss"])]
        va = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
        if tr:
            s, v = zip(*tr)
            ax.plot(s, _ema(list(v)), color=c, alpha=0.45, lw=1.0)
        if va:
            s, v = zip(*va)
            ax.plot(s, v, color=c, lw=2.0, marker="o", ms=3, label=f"{name} (val {v[-1]:.3f})")
            tail = max(v[len(v) // 3:]) if len(v) > 2 else max(v)
            ymax = tail if ymax is None else max(ymax, tail)
        if have_ref and name != "fp32" and va:
            g = [(s_, (v_ - ref_val[s_]) / ref_val[s_] * 100) for s_, v_ in va if s_ in ref_val and s_ > 0]
            if g:
                gs, gv = zip(*g)
                axes[0][1].plot(gs, gv, color=c, lw=2.0, marker="o", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title("validation (markers) and training loss (EMA, thin)")
    if ymax is not None:
        lo = ax.get_ylim()[0]
        ax.set_ylim(lo, max(lo + 0.1, ymax * 1.15))
    ax.grid(alpha=0.3)
    ax.legend()
    if have_ref:
        a2 = axes[0][1]
        a2.axhline(0.0, color="k", lw=0.8)
        a2.set_xlabel("step")
        a2.set_ylabel("validation loss gap to fp32 (%)")
        a2.set_title("gap to fp32")
        a2.grid(alpha=0.3)
        if a2.lines[1:]:
            a2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".loss_curves.", suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        m = os.umask(0o022)
        os.umask(m)
        os.chmod(tmp, 0o666 & ~m)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        plt.close(fig)
    return path
