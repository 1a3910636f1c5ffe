"""A training run's configuration (DIR/config.json) and the flags that set it, plus the
run's user-facing exceptions."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from .model import ARCHS, ModelConfig

DEFAULT_RECIPES = ("fp32", "fp4-direct", "wang2025")


class RunError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class Interrupted(Exception):
    """Raised after a checkpoint was written in response to Ctrl-C (or --stop-after)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@dataclass
class TrainConfig:
    """Everything that determines a run's numbers (stored in DIR/config.json)."""

    recipes: List[str] = field(default_factory=lambda: list(DEFAULT_RECIPES))
    arch: str = "llama"         # "llama" or "gpt2" (a config.json without the field is a llama run)
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    seq_len: int = 128
    mlp_hidden: int = 0
    tie_embeddings: bool = False
    batch_size: int = 16
    steps: int = 200
    lr: float = 2e-3
    warmup: int = -1            # -1: steps // 20 (at least 1)
    min_lr_ratio: float = 0.1   # cosine decay to lr · min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 20
    eval_batches: int = 4
    checkpoint_every: int = 50
    seed: int = 0
    data: Optional[str] = None  # None: the Python standard library's .py files
    tokens: Optional[int] = None  # the --tokens budget that set `steps` (None: --steps or the default)
    switch_at: Optional[float] = None  # target-precision schedule of every quantized recipe (None: off)
    switch_to: str = "fp8"             # ... and its target recipe

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, d_model=self.d_model, layers=self.layers, heads=self.heads,
                           seq_len=self.seq_len, mlp_hidden=self.mlp_hidden, tie_embeddings=self.tie_embeddings)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup >= 0 else max(1, self.steps // 20)

    def validate(self) -> None:
        """One-line ValueErrors for sizes that cannot work (checked before anything is written)."""
        for name in ("batch_size", "steps", "eval_every", "eval_batches", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RunError(f"--lr must be a positive number, got {self.lr}")
        if self.tokens is not None and self.tokens <= 0:
            raise RunError(f"--tokens must be positive, got {self.tokens}")
        if self.switch_at is not None and not 0 <= self.switch_at <= 1:
            raise RunError(f"--switch-at must be a fraction of training in [0, 1], got {self.switch_at}")
        if self.arch not in ARCHS:
            raise RunError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if not self.recipes:
            raise RunError("--recipes is empty; name at least one recipe")
        if len(set(self.recipes)) != len(self.recipes):
            raise RunError(f"--recipes names a recipe twice: {','.join(self.recipes)}")
        try:
            self.model_config().validate()
        except ValueError as e:
            raise RunError(str(e)) from None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: Flags that define a run (stored in config.json; a resumed run must not change them).
CONFIG_FLAGS = ("recipes", "arch", "d_model", "layers", "heads", "seq_len", "mlp_hidden", "tie_embeddings",
                "batch_size", "steps", "lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip", "eval_every",
                "eval_batches", "checkpoint_every", "seed", "data", "tokens", "switch_at", "switch_to")


def config_from_args(args: Any, base: Optional[TrainConfig] = None) -> TrainConfig:
    """TrainConfig from parsed flags; flags left at None keep `base`'s (or the default) value.

    --tokens N sets steps = ceil(N / (batch_size·seq_len)) (with the batch size and sequence
    length in effect) and is stored as `tokens`; --steps clears a stored budget. Giving both is
    a RunError."""
    if getattr(args, "tokens", None) is not None and getattr(args, "steps", None) is not None:
        raise RunError("give either --steps or --tokens, not both")
    d = (base or TrainConfig()).to_dict()
    for k in CONFIG_FLAGS:
        v = getattr(args, k, None)
        if v is None:
            continue
        if k == "recipes" and isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if k == "data":
            v = os.path.abspath(v)
        d[k] = v
    if getattr(args, "steps", None) is not None:
        d["tokens"] = None
    if d.get("tokens") is not None:
        if d["tokens"] <= 0:
            raise RunError(f"--tokens must be positive, got {d['tokens']}")
        per_step = d["batch_size"] * d["seq_len"]
        if per_step > 0:
            d["steps"] = -(-int(d["tokens"]) // per_step)
    return TrainConfig.from_dict(d)
