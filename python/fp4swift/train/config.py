"""A training run's configuration (DIR/config.json) and the flags that set it, plus the
run's user-facing exceptions."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, Tuple, Union

from .model import ARCHS, ModelConfig
from .trials import Trial, all_trials, learning_rates, trial_dir

DEFAULT_RECIPES = ("fp32", "fp4-direct", "wang2025")

#: `--study NAME`: the recipe lists of the papers' ablations (docs/experiments.md has their tables).
STUDIES: Dict[str, Tuple[str, ...]] = {
    # Wang et al. Fig. 5-6: each component of the recipe switched off, and the clamping quantile.
    "wang2025-ablation": ("fp32", "fp4-direct", "wang2025", "wang2025:dge=off", "wang2025:occ=off",
                          "wang2025:compensate=off", "wang2025:alpha=0.999", "wang2025:alpha=0.97"),
    # Wang et al. Table 3: the three FP4 element formats under the same recipe.
    "wang2025-formats": ("fp32", "wang2025:fmt=e1m2", "wang2025", "wang2025:fmt=e3m0"),
    # The block-scaled recipes (MXFP4, NVFP4, Quartet) and Zhou et al. with and without its schedule.
    "block-recipes": ("fp32", "mxfp4", "nvfp4", "quartet", "zhou2025", "zhou2025:switch_at=0.9"),
    # What DGE does (docs/experiments.md): the recipe with and without it.
    "dge": ("fp32", "wang2025", "wang2025:dge=off"),
}


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
    # fp32's best of 1e-3 ... 8e-3 at 200 and at 800 steps, 3 seeds (docs/experiments.md); a
    # list: a learning-rate sweep (each recipe at each rate)
    lr: Union[float, List[float]] = 4e-3
    warmup: int = -1            # -1: steps // 20 (at least 1)
    min_lr_ratio: float = 0.1   # cosine decay to lr · min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 20
    eval_batches: int = 4
    checkpoint_every: int = 50
    seed: int = 0
    seeds: int = 1              # trials per recipe and rate: seeds seed, seed+1, ..., seed+seeds-1
    init: str = "torch"         # ModelConfig.init (a config.json without the field: "normal", as it was)
    data: Optional[str] = None  # None: the Python standard library's .py files
    tokens: Optional[int] = None  # the --tokens budget that set `steps` (None: --steps or the default)
    switch_at: Optional[float] = None  # target-precision schedule of every quantized recipe (None: off)
    switch_to: str = "fp8"             # ... and its target recipe

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, d_model=self.d_model, layers=self.layers, heads=self.heads,
                           seq_len=self.seq_len, mlp_hidden=self.mlp_hidden, tie_embeddings=self.tie_embeddings,
                           init=self.init)

    @property
    def learning_rates(self) -> List[float]:
        """The peak learning rates of the run: one, or the sweep in the order given."""
        return learning_rates(self.lr)

    @property
    def seed_list(self) -> List[int]:
        return [self.seed + i for i in range(self.seeds)]

    def trials(self) -> List[Trial]:
        """Every (recipe, learning rate, seed) this run trains, recipe-major."""
        return all_trials(self.recipes, self.learning_rates, self.seed_list)

    def trial_dir(self, t: Trial) -> str:
        """A trial's folder under the run directory (trials.trial_dir)."""
        return trial_dir(t, len(self.learning_rates), self.seeds)

    def trial_label(self, t: Trial) -> str:
        """How logs name a trial: the recipe, plus the rate and seed when they vary."""
        extra = ([f"lr {t.lr:g}"] if len(self.learning_rates) > 1 else []) + \
                ([f"seed {t.seed}"] if self.seeds > 1 else [])
        return t.recipe + (f" ({', '.join(extra)})" if extra else "")

    def for_trial(self, t: Trial) -> "TrainConfig":
        """The configuration of one trial: this run with a single learning rate and seed (what
        the optimizer, the schedule and the data order read)."""
        return replace(self, recipes=[t.recipe], lr=t.lr, seed=t.seed, seeds=1)

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup >= 0 else max(1, self.steps // 20)

    def validate(self) -> None:
        """One-line ValueErrors for sizes that cannot work (checked before anything is written)."""
        for name in ("batch_size", "steps", "eval_every", "eval_batches", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise RunError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        rates = self.learning_rates
        if not rates:
            raise RunError("--lr is empty; give a learning rate or a comma-separated list of them")
        for v in rates:
            if not (v > 0 and math.isfinite(v)):
                raise RunError(f"--lr must be positive numbers, got {v:g}")
        if len(set(rates)) != len(rates):
            raise RunError(f"--lr names a learning rate twice: {','.join(f'{v:g}' for v in rates)}")
        if self.seeds < 1:
            raise RunError(f"--seeds must be at least 1, got {self.seeds}")
        if self.warmup < -1:  # -1 is the stored default (steps // 20)
            raise RunError(f"--warmup must be 0 or more steps, got {self.warmup}")
        if self.mlp_hidden < 0:  # 0 is the default width
            raise RunError(f"--mlp-hidden must be positive, got {self.mlp_hidden}")
        for name in ("min_lr_ratio", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise RunError(f"{name} must be a finite number >= 0, got {v}")
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
        d = dict(d)
        d.setdefault("init", "normal")  # runs from before the field existed used N(0, 0.02)
        d.setdefault("lr", 2e-3)  # the default before December 2026 (config.json always holds it)
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_learning_rates(text: str) -> Union[float, List[float]]:
    """--lr: one rate ("2e-3") or a comma-separated sweep ("6e-4,1e-3,2e-3"); RunError on
    anything else (validate() checks the values)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise RunError("--lr is empty; give a learning rate or a comma-separated list of them")
    try:
        rates = [float(p) for p in parts if p]
    except ValueError:
        raise RunError(f"--lr takes numbers separated by commas, got {text!r}") from None
    return rates[0] if len(rates) == 1 else rates


#: Flags that define a run (stored in config.json; a resumed run must not change them).
CONFIG_FLAGS = ("recipes", "arch", "d_model", "layers", "heads", "seq_len", "mlp_hidden", "tie_embeddings",
                "batch_size", "steps", "lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip", "eval_every",
                "eval_batches", "checkpoint_every", "seed", "seeds", "init", "data", "tokens", "switch_at", "switch_to")


def config_from_args(args: Any, base: Optional[TrainConfig] = None) -> TrainConfig:
    """TrainConfig from parsed flags; flags left at None keep `base`'s (or the default) value.

    --tokens N sets steps = ceil(N / (batch_size·seq_len)) (with the batch size and sequence
    length in effect) and is stored as `tokens`; --steps clears a stored budget. Giving both is
    a RunError."""
    if getattr(args, "tokens", None) is not None and getattr(args, "steps", None) is not None:
        raise RunError("give either --steps or --tokens, not both")
    study = getattr(args, "study", None)
    if study is not None:
        if getattr(args, "recipes", None) is not None:
            raise RunError("give either --study or --recipes, not both")
        if study not in STUDIES:
            raise RunError(f"--study must be one of {', '.join(STUDIES)}, got {study!r}")
    d = (base or TrainConfig()).to_dict()
    if study is not None:
        d["recipes"] = list(STUDIES[study])
    for k in CONFIG_FLAGS:
        v = getattr(args, k, None)
        if v is None:
            continue
        if k == "recipes" and isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if k == "lr" and isinstance(v, str):
            v = parse_learning_rates(v)
        if k == "data":
            v = os.path.abspath(v)
        d[k] = v
    for flag in ("warmup", "mlp_hidden"):  # 0 / -1 mean "the default" in config.json, not as flags
        v = getattr(args, flag, None)
        if v is not None and v < (0 if flag == "warmup" else 1):
            raise RunError(f"--{flag.replace('_', '-')} must be {'0 or more' if flag == 'warmup' else 'positive'}, "
                           f"got {v}")
    if getattr(args, "steps", None) is not None:
        d["tokens"] = None
    if d.get("tokens") is not None:
        if d["tokens"] <= 0:
            raise RunError(f"--tokens must be positive, got {d['tokens']}")
        per_step = d["batch_size"] * d["seq_len"]
        if per_step > 0:
            d["steps"] = -(-int(d["tokens"]) // per_step)
    return TrainConfig.from_dict(d)
