"""How much memory a `fp4swift train` run needs, estimated from its configuration alone (no
model is built), and the memory the machine has for it: a run that cannot fit is refused in
well under a second, with the numbers, instead of failing after minutes (or meeting the OOM
killer on a machine without swap).

What the estimate counts (float32 everywhere):
- the base model every recipe's copy is made from, one per seed: 4 bytes per parameter;
- per trial (recipe x learning rate x seed; all trials stay in memory, they train in turns):
  weights, gradients and AdamW's two moments, 16 bytes per parameter;
- one training step's activations (one recipe steps at a time): per token and decoder block
  the tensors autograd keeps (norm outputs, q/k/v, rotary q/k, attention probabilities over the
  sequence, MLP hidden states, residuals), plus the logits and their gradient, and for FP4
  recipes the Swift kernels' scratch (the quantized X operand and W);
- the fixed validation batches (int64 inputs and targets);
- a fixed allowance for the Python / torch runtime.
It is an upper-end estimate: the real peak is usually below it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .config import RunError, TrainConfig
from .model import VOCAB_SIZE

#: The interpreter, torch and the Swift library's pools, before any tensor.
RUNTIME_BYTES = 800 << 20
#: Refuse when the estimate exceeds this share of the available memory.
HEADROOM = 0.9


def parameter_count(cfg: TrainConfig) -> int:
    """Parameters of the model `cfg` describes (the same as count_parameters(build_model(...)))."""
    d, h, L, V = cfg.d_model, cfg.model_config().hidden, cfg.layers, VOCAB_SIZE
    head = 0 if cfg.tie_embeddings else V * d
    if cfg.arch == "gpt2":
        block = (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d) + 4 * d
        return V * d + cfg.seq_len * d + L * block + 2 * d + head
    block = 4 * d * d + 3 * d * h + 2 * d
    return V * d + L * block + d + head


@dataclass
class MemoryEstimate:
    parameters: int
    trials: int             # recipes x learning rates x seeds
    model_bytes: int        # base models + per trial weights, gradients, AdamW state
    activation_bytes: int   # one training step
    validation_bytes: int
    total_bytes: int

    def describe(self) -> str:
        return (f"{gb(self.total_bytes)}: {self.parameters:,} parameters x {self.trials} "
                f"{'trial' if self.trials == 1 else 'trials'} (recipe x rate x seed; weights, gradients, AdamW state: {gb(self.model_bytes)}), "
                f"activations of one step {gb(self.activation_bytes)}, validation batches "
                f"{gb(self.validation_bytes)}")


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def estimate(cfg: TrainConfig) -> MemoryEstimate:
    """The memory `fp4swift train` needs for cfg (see the module docstring)."""
    P = parameter_count(cfg)
    R = len(cfg.trials())
    model = 4 * P * (cfg.seeds + 4 * R)
    d, h, L, S, heads = cfg.d_model, cfg.model_config().hidden, cfg.layers, cfg.seq_len, cfg.heads
    tokens = cfg.batch_size * S
    per_token_block = 16 * d + 5 * h + 4 * heads * S
    fp4_scratch = 2 * max(d, h)  # the quantized X operand of the widest layer and its dX
    per_token = L * per_token_block + fp4_scratch + 4 * VOCAB_SIZE + 4 * d
    widest_weight = max(d * h, 3 * d * d if cfg.arch == "gpt2" else d * d, VOCAB_SIZE * d)
    activations = 4 * tokens * per_token + 4 * 2 * widest_weight
    validation = 2 * 8 * cfg.eval_batches * cfg.batch_size * S
    total = model + activations + validation + RUNTIME_BYTES
    return MemoryEstimate(P, R, model, activations, validation, total)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as fh:
            v = fh.read().strip()
    except OSError:
        return None
    return int(v) if v.isdigit() else None


def available_bytes() -> Optional[int]:
    """MemAvailable (/proc/meminfo), capped by the cgroup's limit less its usage; None when
    unknown. FP4SWIFT_MEMORY_BUDGET (bytes, or with a K/M/G suffix) overrides it."""
    env = os.environ.get("FP4SWIFT_MEMORY_BUDGET", "").strip()
    if env:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        mult = units.get(env[-1].upper(), 1)
        try:
            return int(float(env[:-1] if env[-1].upper() in units else env) * mult)
        except ValueError:
            raise RunError(f"FP4SWIFT_MEMORY_BUDGET must be a number of bytes (or with K/M/G), got {env!r}") from None
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = _read_int("/sys/fs/cgroup/memory.max")
    if limit is not None:
        used = _read_int("/sys/fs/cgroup/memory.current") or 0
        cg = max(0, limit - used)
        avail = cg if avail is None else min(avail, cg)
    return avail


def check_memory(cfg: TrainConfig, processes: int = 1) -> MemoryEstimate:
    """RunError when the run's estimate exceeds HEADROOM of the available memory. processes:
    the data-parallel processes on this machine (train/distributed.py), each holding every
    recipe's model and optimizer (the estimate counts each one's activations at the full batch:
    an upper end)."""
    est = estimate(cfg)
    avail = available_bytes()
    if avail is not None and est.total_bytes * processes > HEADROOM * avail:
        per = f" per process, x {processes} processes on this machine" if processes > 1 else ""
        raise RunError(f"this run needs about {est.describe()}{per}; only {gb(avail)} of memory is available. "
                       f"Use a smaller --d-model, --layers, --batch-size, --seq-len or --eval-batches, "
                       f"or fewer --recipes, --lr rates or --seeds")
    return est
