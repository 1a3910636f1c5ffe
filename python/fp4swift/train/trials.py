"""A run's trials: every recipe at every peak learning rate from every seed, and the folder
each one writes (torch-free, so `fp4swift scaling-law` can read runs without PyTorch)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Sequence


@dataclass(frozen=True)
class Trial:
    """One training of a run: a recipe at one peak learning rate from one seed (initialization
    and data order)."""

    recipe: str
    lr: float
    seed: int


def learning_rates(lr: Any) -> List[float]:
    """The rates of a config's `lr` field: one number, or a list (a sweep) in the order given."""
    return [float(v) for v in lr] if isinstance(lr, (list, tuple)) else [float(lr)]


def all_trials(recipes: Sequence[str], rates: Sequence[float], seeds: Sequence[int]) -> List[Trial]:
    """Recipe-major, then rate, then seed: the order trials start and are reported in."""
    return [Trial(r, float(lr), int(s)) for r in recipes for lr in rates for s in seeds]


def trial_dir(t: Trial, n_rates: int, n_seeds: int) -> str:
    """A trial's folder under the run directory: <recipe>, plus lr<rate> when the run sweeps
    rates and seed<k> when it has several seeds (a one-trial-per-recipe run keeps DIR/<recipe>)."""
    parts = [t.recipe]
    if n_rates > 1:
        parts.append(f"lr{t.lr:g}")
    if n_seeds > 1:
        parts.append(f"seed{t.seed}")
    return os.path.join(*parts)
