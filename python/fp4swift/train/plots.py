"""Figures (matplotlib, Agg backend: no display needed): the loss curves of a training run and
the scaling-law fit of `fp4swift scaling-law`."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .files import atomic_write


def _ema(values: List[float], beta: float = 0.9) -> np.ndarray:
    out, m = [], None
    for v in values:
        m = v if m is None else beta * m + (1 - beta) * v
        out.append(m)
    return np.asarray(out)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, path: str, plt: Any) -> str:
    """Saves the figure atomically with the usual file mode, and closes it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")
    finally:
        plt.close(fig)


def plot_scaling(path: str, fit: Any) -> Optional[str]:
    """One panel per recipe of a scaling.ScalingFit (read through its fields, table() and
    predict(), so this module imports nothing from scaling.py): final validation loss against
    tokens trained (log x axis), one colour per model size N, and the fitted law L(N·effN, D·effD) as a line per size
    (the base recipe's fit dashed in the other panels for comparison). Returns the path, or None
    when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return None
    recipes = [r.recipe for r in fit.table()]
    sizes = sorted({p.n for p in fit.points})
    ds = [p.d for p in fit.points]
    grid = np.geomspace(min(ds) / 1.5, max(ds) * 1.5, 100)
    cols = min(3, len(recipes))
    rows = int(math.ceil(len(recipes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    color = {n: cmap(0.85 * i / max(1, len(sizes) - 1)) for i, n in enumerate(sizes)}
    for k, (ax, r) in enumerate(zip(axes.flat, fit.table())):
        pts = [p for p in fit.points if p.recipe == r.recipe]
        for n in sizes:
            sel = sorted((p.d, p.loss) for p in pts if p.n == n)
            if sel:
                x, y = zip(*sel)
                ax.plot(x, y, "o", color=color[n], ms=5, label=f"N = {n:,.0f}")
            if r.eff_n is not None and any(p.n == n for p in pts):
                ax.plot(grid, fit.predict(n, grid, r.eff_n, r.eff_d), "-", color=color[n], lw=1.4)
                if r.recipe != fit.base_recipe:
                    ax.plot(grid, fit.predict(n, grid), ":", color=color[n], lw=1.0, alpha=0.7)
        title = r.recipe if r.recipe == fit.base_recipe or r.eff_n is None else \
            f"{r.recipe}: effN {r.eff_n:.2f}, effD {r.eff_d:.2f}"
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_xlabel("tokens trained D")
        if k % cols == 0:
            ax.set_ylabel("final validation loss (nats/byte)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(recipes):]:
        ax.set_visible(False)
    p = fit.params
    fig.suptitle(f"L = (A/(N effN)^{p['alpha']:.2f} + B/(D effD)^{p['beta']:.2f})^{p['gamma']:.2f} + {p['E']:.3f}  "
                 f"(solid: fit; dotted: {fit.base_recipe} fit at the same N)")
    fig.tight_layout()
    return _save(fig, path, plt)


def _by_step(runs: List[List[Dict[str, Any]]], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, values[seed, step]) of `key` at the steps every seed has a finite value for."""
    per = [{r["step"]: r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])} for rows in runs]
    steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
    return np.asarray(steps), np.asarray([[p[s] for s in steps] for p in per], dtype=np.float64).reshape(len(per), -1)


def plot_losses(path: str, curves: Dict[str, List[List[Dict[str, Any]]]], title: str = "",
                reference: Optional[str] = "fp32") -> Optional[str]:
    """Writes a PNG (atomically) with the training loss (EMA-smoothed) and validation loss of
    every recipe, plus the validation gap to the `reference` curve when present. `curves` maps a label to
    the metrics rows of each of its seeds: the lines are means over seeds, and with several
    seeds a band spans their minimum to maximum. Returns the path, or None when matplotlib is
    missing."""
    plt = _pyplot()
    if plt is None:
        return None
    have_ref = reference is not None and reference in curves
    fig, axes = plt.subplots(1, 2 if have_ref else 1, figsize=(13 if have_ref else 7.5, 4.8), squeeze=False)
    ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ref_steps, ref_vals = _by_step(curves[reference], "val_loss") if have_ref else (np.zeros(0), np.zeros((0, 0)))
    ymax = None
    for i, (name, runs) in enumerate(curves.items()):
        c = colors[i % len(colors)]
        n = len(runs)
        # A target-precision schedule: a dotted line where the recipe switched (first switched row).
        switched = next((r["step"] for r in (runs[0] if runs else []) if r.get("switched")), None)
        if switched is not None:
            ax.axvline(switched - 1, color=c, ls=":", lw=1.2, label=f"{name}: precision switch")
        ts, tv = _by_step(runs, "train_loss")
        vs, vv = _by_step(runs, "val_loss")
        if len(ts):
            ax.plot(ts, _ema(list(tv.mean(axis=0))), color=c, alpha=0.45, lw=1.0)
        if len(vs):
            mean = vv.mean(axis=0)
            if n > 1:
                ax.fill_between(vs, vv.min(axis=0), vv.max(axis=0), color=c, alpha=0.2, lw=0)
            ax.plot(vs, mean, color=c, lw=2.0, marker="o", ms=3,
                    label=f"{name} (val {mean[-1]:.3f}" + (f", mean of {n} seeds)" if n > 1 else ")"))
            tail = float(vv[:, len(mean) // 3:].max()) if len(mean) > 2 else float(vv.max())
            ymax = tail if ymax is None else max(ymax, tail)
        if have_ref and name != reference and len(vs) and len(ref_steps) and vv.shape[0] == ref_vals.shape[0]:
            common = [k for k, s in enumerate(vs) if s > 0 and s in set(ref_steps.tolist())]
            if common:
                ri = [int(np.searchsorted(ref_steps, vs[k])) for k in common]
                gaps = (vv[:, common] - ref_vals[:, ri]) / ref_vals[:, ri] * 100  # paired by seed
                gs = vs[common]
                if n > 1:
                    axes[0][1].fill_between(gs, gaps.min(axis=0), gaps.max(axis=0), color=c, alpha=0.2, lw=0)
                axes[0][1].plot(gs, gaps.mean(axis=0), color=c, lw=2.0, marker="o", ms=3, label=name)
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
        a2.set_ylabel(f"validation loss gap to {reference} (%)")
        a2.set_title(f"gap to {reference} (paired by seed; band: min to max)")
        a2.grid(alpha=0.3)
        if a2.lines[1:]:
            a2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, plt)
