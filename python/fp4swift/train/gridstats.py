"""`fp4swift grid-stats DIR`: where a run's trained weights sit relative to the FP4 grid, and how
far and how fast they moved: the measurements behind the DGE study in docs/experiments.md.

For every trial of a `fp4swift train` run, over the linear layers the wang2025 recipe converts
(its per-output-channel e2m1 `absmax` quantizer, numerics.md §2), from the trial's final
checkpoint:

- qerr: ||W − Q(W)||_F / ||W||_F, the relative error of the forward's weight quantization;
- grid_dist: the mean distance of v = W / s_w from the nearer end of its grid interval, in units
  of that interval (0 = on a grid point, 0.5 = a midpoint; 0.25 for weights spread evenly);
- near_grid: the share of weights within a tenth of an interval of a grid point (0.2 evenly);
- dge_mean: the mean DGE multiplier f'(v) (k = 5, C = 3; numerics.md §4) at the final weights;
- drift: ||W − W_init||_F / ||W_init||_F, how far training moved the weights from the seed's
  initialization (the same for every recipe of a seed);
- adam_step: the median over weights of |m̂| / (sqrt(v̂) + eps), AdamW's last update direction
  before the learning rate (1 when every step of the recent past pushed the same way with the
  same size; smaller when the gradient's sign or size fluctuates);
- step_grid: the median of lr_peak · adam_step-per-weight / (s_w · δ), the update a weight would
  make at the peak learning rate, in units of its grid interval.

fp32 trials are measured with the same quantizer, as a reference for weights that never saw it.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

import fp4swift as f4

#: e2m1 grid magnitudes (numerics.md §1): interval [GRID[i], GRID[i+1]] for i = 0..6.
GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def grid_position(v: np.ndarray) -> np.ndarray:
    """Fraction of the way through its e2m1 interval of every |v| (|v| ≥ 6 gives 1)."""
    a = np.minimum(np.abs(v.astype(np.float64)), 6.0)
    i = np.clip(np.searchsorted(GRID, a, side="right") - 1, 0, 6)
    return (a - GRID[i]) / (GRID[i + 1] - GRID[i])


def interval_width(v: np.ndarray) -> np.ndarray:
    a = np.minimum(np.abs(v.astype(np.float64)), 6.0)
    i = np.clip(np.searchsorted(GRID, a, side="right") - 1, 0, 6)
    return GRID[i + 1] - GRID[i]


def weight_stats(w: np.ndarray, w_init: np.ndarray, adam: Optional[Dict[str, Any]], lr_peak: float,
                 betas: tuple = (0.9, 0.95), eps: float = 1e-8) -> Dict[str, float]:
    """The measurements of the module docstring for one weight matrix [out, in]."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1, keepdims=True)
    s = np.where(amax > 0, amax / 6.0, 1.0).astype(np.float32)
    v = w / s
    wq = f4.fake_quantize(w, "e2m1", granularity="row", scale_rule="absmax")
    pos = grid_position(v)
    dist = np.minimum(pos, 1 - pos)
    out = {"qerr": float(np.linalg.norm(w - wq) / max(np.linalg.norm(w), 1e-30)),
           "grid_dist": float(dist.mean()), "near_grid": float((dist < 0.1).mean()),
           "dge_mean": float(f4.dge_derivative(v).mean()),
           "drift": float(np.linalg.norm(w - w_init) / max(np.linalg.norm(w_init), 1e-30)),
           "adam_step": math.nan, "step_grid": math.nan}
    if adam is not None and "exp_avg" in adam and "exp_avg_sq" in adam:
        t = float(adam.get("step", 1))
        m = np.asarray(adam["exp_avg"], dtype=np.float64) / (1 - betas[0] ** t)
        v2 = np.asarray(adam["exp_avg_sq"], dtype=np.float64) / (1 - betas[1] ** t)
        direction = np.abs(m) / (np.sqrt(v2) + eps)
        out["adam_step"] = float(np.median(direction))
        out["step_grid"] = float(np.median(lr_peak * direction / (s * interval_width(v))))
    return out


def trial_stats(ckpt_path: str, cfg: Any, seed: int, lr: float) -> Dict[str, float]:
    """Mean of weight_stats over the layers wang2025 converts, for one trial's checkpoint."""
    import torch

    from .fidelity import converted_linear_names
    from .model import build_model
    from .outputs import load_checkpoint

    ck = load_checkpoint(ckpt_path)
    init = build_model(cfg.model_config(), seed)
    names = [n + ".weight" for n in converted_linear_names(init, "wang2025")]
    state = ck["model"]
    params = [n for n, _ in init.named_parameters()]
    opt_state = ck["optimizer"]["state"]
    # AdamW's state is indexed by the parameter's position in its param groups (make_optimizer:
    # matrices first, then vectors, in named_parameters order).
    order = [n for n, p in init.named_parameters() if p.dim() >= 2] + \
            [n for n, p in init.named_parameters() if p.dim() < 2]
    init_state = init.state_dict()
    rows = []
    for n in names:
        if n not in state:
            continue
        idx = order.index(n) if n in params else None
        adam = opt_state.get(idx) if idx is not None else None
        adam = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in adam.items()} if adam else None
        if adam is not None and isinstance(adam.get("step"), np.ndarray):
            adam["step"] = float(adam["step"])
        rows.append(weight_stats(state[n].float().numpy(), init_state[n].float().numpy(), adam, lr))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def grid_stats_command(args: Any) -> int:
    """Prints the table of the module docstring for a run directory (exit 2 on bad input)."""
    from .config import TrainConfig

    run = args.run
    path = os.path.join(run, "config.json")
    try:
        with open(path) as fh:
            cfg = TrainConfig.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError) as e:
        print(f"fp4swift grid-stats: error: cannot read {path}: {e}", file=sys.stderr)
        return 2
    keys = ("qerr", "grid_dist", "near_grid", "dge_mean", "drift", "adam_step", "step_grid")
    table: List[Dict[str, Any]] = []
    for t in cfg.trials():
        ck = os.path.join(run, cfg.trial_dir(t), "checkpoint.pt")
        if not os.path.isfile(ck):
            print(f"fp4swift grid-stats: note: {cfg.trial_dir(t)} has no checkpoint; skipped", file=sys.stderr)
            continue
        table.append(dict(trial=cfg.trial_dir(t), **trial_stats(ck, cfg, t.seed, t.lr)))
    if not table:
        print(f"fp4swift grid-stats: error: no checkpoints under {run}", file=sys.stderr)
        return 2
    print("| trial | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for r in table:
        print(f"| {r['trial']} | " + " | ".join(f"{r.get(k, math.nan):.4f}" for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=2)
    return 0
