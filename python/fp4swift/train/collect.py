"""`fp4swift compare RUN...`: the comparison of `fp4swift train --seeds/--lr` (compare.py) over
trials that ran as separate runs, for example one seed per process or per machine.

The runs must agree on everything that shapes a trial's numbers except the recipes, the
learning rates and the seeds; a trial (recipe, rate, seed) may appear in only one of them.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

from .config import CONFIG_FLAGS, RunError, TrainConfig
from .outputs import RecipeResult, read_metrics, summarize

#: Flags that may differ between the runs being compared (the rest must match).
FREE_FLAGS = ("recipes", "lr", "seed", "seeds", "checkpoint_every")


def read_results(run: str) -> Tuple[TrainConfig, List[RecipeResult]]:
    """A run's configuration and a RecipeResult per trial that has a metrics.csv."""
    path = os.path.join(run, "config.json")
    try:
        with open(path) as fh:
            cfg = TrainConfig.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise RunError(f"cannot read {path}: {e}") from None
    results = []
    for t in cfg.trials():
        mpath = os.path.join(run, cfg.trial_dir(t), "metrics.csv")
        if not os.path.isfile(mpath):
            continue
        try:
            rows = read_metrics(mpath)
        except (OSError, ValueError, KeyError) as e:
            raise RunError(f"cannot read {mpath}: {e}") from None
        train_time = sum(cfg.tokens_per_step / r["tokens_per_s"] for r in rows if r.get("tokens_per_s"))
        last = rows[-1] if rows else {}
        diverged = last.get("step") if last.get("val_loss") is not None and not math.isfinite(last["val_loss"]) else None
        switched = next((r["step"] for r in rows if r.get("switched")), None)
        results.append(RecipeResult(t.recipe, rows, train_time, int(last.get("step") or 0) * cfg.tokens_per_step,
                                    diverged, None if switched is None else (int(switched) - 1, "switched"),
                                    lr=t.lr, seed=t.seed))
    return cfg, results


def merge(runs: List[str]) -> Tuple[TrainConfig, List[RecipeResult], List[int]]:
    """One configuration (recipes and rates in first-seen order) and the results of every run."""
    base: Optional[TrainConfig] = None
    recipes: List[str] = []
    rates: List[float] = []
    seen: Dict[Tuple[str, float, int], str] = {}
    results: List[RecipeResult] = []
    for run in runs:
        cfg, res = read_results(run)
        if base is None:
            base = cfg
        else:
            differ = [k for k in CONFIG_FLAGS if k not in FREE_FLAGS and getattr(cfg, k) != getattr(base, k)]
            if differ:
                raise RunError(f"{run} and {runs[0]} differ in " + ", ".join(f"--{k.replace('_', '-')}" for k in differ)
                               + "; only recipes, learning rates and seeds may differ")
        for r in res:
            key = (r.recipe, r.lr, r.seed)
            if key in seen:
                raise RunError(f"{r.recipe} at lr {r.lr:g} from seed {r.seed} is in both {seen[key]} and {run}")
            seen[key] = run
        recipes += [x for x in cfg.recipes if x not in recipes]
        rates += [x for x in cfg.learning_rates if x not in rates]
        results += res
    assert base is not None
    seeds = sorted({r.seed for r in results})
    merged = replace(base, recipes=recipes, lr=rates if len(rates) > 1 else rates[0], seed=seeds[0] if seeds else 0,
                     seeds=max(1, len(seeds)))
    return merged, results, seeds


def compare_command(args: Any) -> int:
    """Prints the comparison of the runs' trials (exit 2 on bad input)."""
    try:
        cfg, results, seeds = merge(list(args.runs))
        if not results:
            raise RunError("the runs hold no trial with a metrics.csv")
        _, md = summarize(results, cfg, seeds)
    except RunError as e:
        print(f"fp4swift compare: error: {e}", file=sys.stderr)
        return 2
    rates = ",".join(f"{v:g}" for v in cfg.learning_rates)
    print(f"{len(results)} trials from {len(args.runs)} run(s): {cfg.d_model}-wide, {cfg.layers} layers, "
          f"{cfg.steps} steps x batch {cfg.batch_size} x seq {cfg.seq_len}, lr {rates}, seeds "
          f"{','.join(map(str, seeds))}, init {cfg.init}\n")
    print(md)
    return 0
