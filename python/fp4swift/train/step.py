"""One training step and what it needs: the optimizer, the learning-rate schedule, the update
itself (shared by `fp4swift train` and `fp4swift fidelity`), and the validation loss."""
from __future__ import annotations

import math
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .._native import FP4Error
from . import distributed as dist
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
    """Mean loss over the batches. Under torchrun each rank evaluates every P-th batch whole and
    the sum is all-reduced: every rank returns the same value (train/distributed.py)."""
    was = model.training
    model.eval()
    total = 0.0
    for x, y in dist.my_batches(batches):
        total += float(model.loss(torch.from_numpy(x), torch.from_numpy(y)))
    model.train(was)
    return dist.all_sum(total) / len(batches)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, tokens: np.ndarray,
               step: int, ddp: Optional[nn.Module] = None) -> Tuple[float, float]:
    """Update `step` (0-based) of a model: the batch train_batch(tokens, seed, step), the learning
    rate lr_at(step), loss, backward, gradient clipping and the optimizer step.

    Returns (training loss, seconds spent in the forward, backward and update). A non-finite loss
    updates nothing, and neither does an FP4Error of the Swift kernels (they refuse non-finite
    input: that is divergence too); both return a loss of NaN so the caller can stop.

    ddp: the model's DistributedDataParallel wrapper (distributed.wrap) under torchrun. Then this
    rank trains on its rows of the global batch, DDP sums the gradients, and the returned loss is
    the global batch's mean (all-reduced before the backward, so every rank takes the same branch;
    an FP4Error in the backward, where the other ranks wait inside DDP's all-reduce, is raised)."""
    x, y = train_batch(tokens, cfg.seed, step, cfg.batch_size, cfg.seq_len)
    if ddp is not None:
        x, y = dist.shard(x, y)
    lr = lr_at(cfg, step)
    for g in opt.param_groups:
        g["lr"] = lr
    t0 = time.perf_counter()
    loss_v: float
    if ddp is not None:
        return _ddp_step(model, ddp, opt, cfg, x, y), time.perf_counter() - t0
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


def _ddp_step(model: nn.Module, ddp: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, x: np.ndarray,
              y: np.ndarray) -> float:
    """train_step's update on this rank's rows (see there); returns the global mean loss."""
    loss: Optional[torch.Tensor] = None
    try:
        loss = dist.ddp_loss(ddp, x, y, cfg.tokens_per_step)
        local = loss.detach().item()
    except FP4Error:
        local = float("nan")
    loss_v = dist.all_sum(local)
    if loss is not None and math.isfinite(loss_v):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_v if math.isfinite(loss_v) else float("nan")
