"""One training step and what it needs: the optimizer, the learning-rate schedule, the update
itself (shared by `fp4swift train` and `fp4swift fidelity`), and the validation loss."""
from __future__ import annotations

import math
import time
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from .._native import FP4Error
from .config import TrainConfig
from .data import train_batch


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norm gains)."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update `step` (0-based): linear warmup, then cosine to lr·min_lr_ratio."""
    w = cfg.warmup_steps
    if step < w:
        return cfg.lr * (step + 1) / w
    t = (step - w) / max(1, cfg.steps - w)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def evaluate(model: nn.Module, batches: List[Tuple[np.ndarray, np.ndarray]]) -> float:
    was = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        total += float(model.loss(torch.from_numpy(x), torch.from_numpy(y)))
    model.train(was)
    return total / len(batches)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, tokens: np.ndarray,
               step: int) -> Tuple[float, float]:
    """Update `step` (0-based) of a model: the batch train_batch(tokens, seed, step), the learning
    rate lr_at(step), loss, backward, gradient clipping and the optimizer step.

    Returns (training loss, seconds spent in the forward, backward and update). A non-finite loss
    updates nothing, and neither does an FP4Error of the Swift kernels (they refuse non-finite
    input: that is divergence too); both return a loss of NaN so the caller can stop."""
    x, y = train_batch(tokens, cfg.seed, step, cfg.batch_size, cfg.seq_len)
    lr = lr_at(cfg, step)
    for g in opt.param_groups:
        g["lr"] = lr
    t0 = time.perf_counter()
    loss_v: float
    try:
        loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
        loss_v = loss.detach().item()
        if math.isfinite(loss_v):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        opt.zero_grad(set_to_none=True)
    except FP4Error:
        opt.zero_grad(set_to_none=True)
        loss_v = float("nan")
    return loss_v, time.perf_counter() - t0
