"""Comparing recipes over seeds and learning rates: what `fp4swift train --seeds N --lr a,b,c`
reports.

A run trains every recipe at every peak learning rate from every seed (a *trial* each). Trials
with the same seed share the initialization and the data order, so a recipe's gap to fp32 is
measured seed by seed (a paired comparison) and summarized by its mean and a 95% Student-t
interval. The verdict asks for both: a recipe is called lower or higher than fp32 ("beyond the
seed spread") only when its seeds' range of final losses does not overlap fp32's and the
interval excludes 0; otherwise it is "within noise". One seed gives no noise estimate, so no
verdict.

A recipe's best learning rate is the rate with the lowest mean final validation loss over the
seeds; a rate at which any seed diverged or did not finish is not eligible. Trials a run does
not hold (runs read together by `fp4swift compare` may cover different seeds) are left out of
the statistics rather than counted as failures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

#: Two-sided 95% quantiles of Student's t by degrees of freedom (t_{0.975, df}); beyond the
#: table the normal quantile is close enough for an interval over seeds.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(df: int) -> float:
    """t_{0.975, df} (the largest tabulated df not above df; 1.96 past the table)."""
    if df < 1:
        return math.nan
    keys = [k for k in T_975 if k <= df]
    return T_975[max(keys)] if df <= 120 else 1.96


@dataclass
class SeedStats:
    """Final validation losses of one recipe at one learning rate, by seed."""

    by_seed: Dict[int, float]

    @property
    def values(self) -> List[float]:
        return [self.by_seed[s] for s in sorted(self.by_seed)]

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def complete(self) -> bool:
        """Every seed finished with a finite loss."""
        return self.n > 0 and all(math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.complete else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n − 1); 0 for one seed."""
        if not self.complete:
            return math.nan
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def low(self) -> float:
        return min(self.values) if self.complete else math.nan

    @property
    def high(self) -> float:
        return max(self.values) if self.complete else math.nan


@dataclass
class Gap:
    """A recipe's gap to fp32 in percent of fp32's loss, paired by seed."""

    per_seed: Dict[int, float]
    mean: float
    half_width: float           # of the 95% interval; nan for one seed

    @property
    def interval(self) -> Tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width


def paired_gap(stats: SeedStats, ref: SeedStats) -> Optional[Gap]:
    """(v_s − f_s) / f_s · 100 for every seed s both have with finite losses; None when there
    is none."""
    seeds = [s for s in sorted(stats.by_seed) if s in ref.by_seed
             and math.isfinite(stats.by_seed[s]) and math.isfinite(ref.by_seed[s]) and ref.by_seed[s] != 0]
    if not seeds:
        return None
    d = {s: (stats.by_seed[s] - ref.by_seed[s]) / ref.by_seed[s] * 100 for s in seeds}
    n = len(d)
    m = sum(d.values()) / n
    if n < 2:
        return Gap(d, m, math.nan)
    sd = math.sqrt(sum((v - m) ** 2 for v in d.values()) / (n - 1))
    return Gap(d, m, t_quantile(n - 1) * sd / math.sqrt(n))


def verdict(stats: SeedStats, ref: SeedStats, ref_name: str = "fp32") -> str:
    """'lower than fp32' / 'higher than fp32' when the seed ranges do not overlap and the paired
    95% interval excludes 0, 'within noise' otherwise, and why there is no verdict when a seed
    failed or there is only one."""
    if not stats.complete or not ref.complete:
        return "no verdict (a seed diverged or did not finish)"
    if stats.n < 2 or ref.n < 2:
        return "one seed: no noise estimate"
    separate = stats.high < ref.low or stats.low > ref.high
    if not separate:
        return "within noise"
    gap = paired_gap(stats, ref)
    if gap is None or not math.isfinite(gap.half_width) or gap.interval[0] <= 0 <= gap.interval[1]:
        return "within noise (the seed ranges separate, but the 95% interval includes 0)"
    return f"{'lower' if stats.high < ref.low else 'higher'} than {ref_name} beyond the seed spread"


class Comparison:
    """Final validation losses of every trial, indexed by (recipe, lr) and seed."""

    def __init__(self, recipes: Sequence[str], rates: Sequence[float], seeds: Sequence[int],
                 finals: Dict[Tuple[str, float, int], float]) -> None:
        """finals: (recipe, lr, seed) -> final validation loss (nan: diverged or unfinished);
        a trial without an entry is left out (not run here)."""
        self.recipes, self.rates, self.seeds = list(recipes), list(rates), list(seeds)
        self.stats = {(r, lr): SeedStats({s: finals[(r, lr, s)] for s in self.seeds if (r, lr, s) in finals})
                      for r in self.recipes for lr in self.rates}

    def best_lr(self, recipe: str) -> Optional[float]:
        """The rate with the lowest mean final loss over complete rates (the first on a tie);
        None when no rate is complete."""
        ok = [(self.stats[(recipe, lr)].mean, i, lr) for i, lr in enumerate(self.rates)
              if self.stats[(recipe, lr)].complete]
        return min(ok)[2] if ok else None

    @property
    def reference(self) -> Optional[str]:
        return "fp32" if "fp32" in self.recipes else None

    def shared_lr(self) -> float:
        """The rate every recipe is compared at in the shared-rate table: fp32's best (the fair
        baseline), else the first rate."""
        ref = self.reference
        best = self.best_lr(ref) if ref else None
        return best if best is not None else self.rates[0]

    def rows(self, basis: str) -> List[Dict[str, object]]:
        """One row per recipe. basis 'best_lr': each recipe (fp32 included) at its own best rate;
        'shared_lr': every recipe at shared_lr()."""
        ref = self.reference
        chosen = {r: (self.best_lr(r) if basis == "best_lr" else self.shared_lr()) for r in self.recipes}
        for r, lr in chosen.items():
            if lr is None:  # nothing complete: show the first rate's (partial) numbers
                chosen[r] = self.rates[0]
        out = []
        for r in self.recipes:
            st = self.stats[(r, chosen[r])]
            row: Dict[str, object] = {"recipe": r, "basis": basis, "lr": chosen[r], "seeds": st.n,
                                      "mean": st.mean, "std": st.std, "low": st.low, "high": st.high,
                                      "per_seed": st.by_seed, "gap": None, "verdict": ""}
            if ref is not None and r != ref:
                ref_st = self.stats[(ref, chosen[ref])]
                row["gap"] = paired_gap(st, ref_st)
                row["verdict"] = verdict(st, ref_st)
            out.append(row)
        return out

    def verdict_line(self, basis: str) -> str:
        """One sentence over every recipe of rows(basis)."""
        ref = self.reference
        rows = [r for r in self.rows(basis) if r["recipe"] != ref]
        where = "each at its best learning rate" if basis == "best_lr" else f"at learning rate {self.shared_lr():g}"
        if ref is None:
            return "No fp32 recipe in this run: no gap to a float32 baseline is reported."
        if len(self.seeds) < 2:
            return (f"Verdict: one seed per recipe, so the seed-to-seed spread is unknown and no recipe is called "
                    f"better or worse than {ref}; rerun with --seeds 3 or more.")
        parts = []
        for r in rows:
            gap: Optional[Gap] = r["gap"]  # type: ignore[assignment]
            g = "" if gap is None else (f" ({gap.mean:+.2f}%, 95% interval [{gap.interval[0]:+.2f}, "
                                        f"{gap.interval[1]:+.2f}])")
            parts.append(f"{r['recipe']} {r['verdict']}{g}")
        beyond = [r["recipe"] for r in rows if "beyond" in str(r["verdict"])]
        counts = sorted({int(r["seeds"]) for r in self.rows(basis)})  # type: ignore[call-overload]
        over = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        head = (f"Verdict over {over} seeds, {where}: " if beyond else
                f"Verdict over {over} seeds, {where}: no recipe differs from {ref} by more than the "
                f"seed spread; ")
        return head + "; ".join(parts) + "."


def format_pm(mean: float, std: float, n: int, of: int = 0) -> str:
    """'mean ± std' ('mean' for one seed), with '(n seeds)' when n is below `of`."""
    if not math.isfinite(mean):
        return "n/a"
    text = f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std:.4f}"
    return text + (f" ({n} seed{'s' if n != 1 else ''})" if 0 < n < of else "")
