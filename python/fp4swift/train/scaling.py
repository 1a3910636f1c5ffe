"""`fp4swift scaling-law`: a scaling-law fit over finished `fp4swift train` runs.

Every finished recipe of every run is one point (recipe, N, D, L):

    N  non-embedding parameters (DIR/run.json "parameters.non_embedding"; runs without a
       run.json get it recomputed from config.json, which needs PyTorch)
    D  tokens trained = last step in DIR/<recipe>/metrics.csv x batch_size x seq_len
    L  final validation loss = the last val_loss in that metrics.csv

A recipe of a run counts when it reached config.json's `steps` with a finite loss; unfinished,
diverged or missing recipes are listed as skipped. The law is the one Quartet (Castro et al.)
fits, Hoffmann et al.'s form with an exponent γ and per-recipe efficiencies:

    L(N, D) = (A / (N·effN)^α + B / (D·effD)^β)^γ + E

The base recipe (fp32; effN = effD = 1) fixes A, α, B, β, γ, E; then each other recipe gets its
own effN, effD with those frozen. Both fits minimize the Huber loss (δ = 1e-3 by default) of
log L_fit − log L with L-BFGS-B (analytic gradients) from a grid of starts, keeping the best,
as Hoffmann et al. do. Reading the runs needs only the standard library and numpy; the fit
needs scipy.

Output (in --out, default the first RUNS_DIR): scaling_fit.json (law, base parameters, per
recipe effN/effD/residual, every point with its fitted loss), scaling_fit.csv (the printed
table) and scaling_law.png (loss against tokens per model size, fitted curves; needs matplotlib).
"""
from __future__ import annotations

import contextlib
import csv
import ctypes
import itertools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .compare import Comparison
from .files import atomic_write_text
from .trials import all_trials, learning_rates, trial_dir
from .plots import plot_scaling

LAW = "L(N, D) = (A/(N*effN)^alpha + B/(D*effD)^beta)^gamma + E"
PARAM_NAMES = ("A", "alpha", "B", "beta", "gamma", "E")
#: Fewest base points (distinct (N, D) pairs) for the six base parameters.
MIN_BASE_POINTS = len(PARAM_NAMES)
#: Fewest points (distinct (N, D) pairs) for a recipe's two efficiencies.
MIN_RECIPE_POINTS = 2
#: Bounds of the fitted efficiencies.
EFF_BOUNDS = (1e-4, 1e2)


class ScalingError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


@dataclass(frozen=True)
class Point:
    """One finished recipe of one run."""

    recipe: str
    n: float          # non-embedding parameters
    d: float          # tokens trained
    loss: float       # final validation loss
    run: str          # the run directory
    arch: str = "llama"


# ---------------------------------------------------------------------------------------
# reading runs


def find_run_dirs(paths: Sequence[str]) -> List[str]:
    """Run directories (holding config.json) named by or below `paths`, in a stable order,
    each once. A path that does not exist or cannot be read is a ScalingError."""
    found: List[str] = []
    seen = set()

    def add(d: str) -> None:
        real = os.path.realpath(d)
        if real not in seen:
            seen.add(real)
            found.append(d)

    def fail(e: OSError) -> None:
        raise ScalingError(f"cannot read {e.filename}: {e.strerror or e}")

    for p in paths:
        if not os.path.exists(p):
            raise ScalingError(f"{p}: no such directory")
        if not os.path.isdir(p):
            raise ScalingError(f"{p} is not a directory (name run directories or directories holding them)")
        if not os.access(p, os.R_OK | os.X_OK):
            raise ScalingError(f"cannot read {p}: permission denied")
        if os.path.isfile(os.path.join(p, "config.json")):
            add(p)
            continue
        for dirpath, dirnames, filenames in os.walk(p, onerror=fail):  # symlinks (runs/latest) are not followed
            dirnames.sort()
            if "config.json" in filenames:
                add(dirpath)
                dirnames[:] = []  # a run's recipe folders hold no runs
    return found


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as fh:
            d = json.load(fh)
    except (OSError, ValueError) as e:
        raise ScalingError(f"cannot read {path}: {e}") from None
    if not isinstance(d, dict):
        raise ScalingError(f"cannot read {path}: not a JSON object")
    return d


def _last_metrics(path: str) -> Tuple[int, Optional[float]]:
    """(last step, validation loss at that step) of a metrics.csv (the runner evaluates at the
    final step, so a finished recipe's last row holds its final validation loss)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise ScalingError(f"cannot read {path}: {e.strerror or e}") from None
    if rows and ("step" not in rows[0] or "val_loss" not in rows[0]):
        raise ScalingError(f"cannot read {path}: no step/val_loss columns")
    try:
        step = int(rows[-1]["step"]) if rows else 0
        last = rows[-1].get("val_loss") or "" if rows else ""
        val = float(last) if last != "" else None
    except (TypeError, ValueError) as e:
        raise ScalingError(f"cannot read {path}: {e}") from None
    return step, val


def _non_embedding_params(run: str, cfg: Dict[str, Any]) -> Tuple[int, str]:
    """(N, source): run.json's count, else recomputed from config.json (needs torch)."""
    meta_path = os.path.join(run, "run.json")
    if os.path.isfile(meta_path):
        meta = _read_json(meta_path)
        try:
            return int(meta["parameters"]["non_embedding"]), "run.json"
        except (KeyError, TypeError, ValueError):
            raise ScalingError(f"{meta_path} has no parameters.non_embedding count") from None
    try:
        from .model import ModelConfig, parameter_counts
    except ImportError:
        raise ScalingError(f"{run} has no run.json; recomputing its parameter count from config.json needs "
                           f"PyTorch: pip install -e .[torch]") from None
    keys = ("arch", "d_model", "layers", "heads", "seq_len", "mlp_hidden", "tie_embeddings")
    try:
        mc = ModelConfig.from_dict({k: cfg[k] for k in keys if k in cfg})
        mc.validate()
        return parameter_counts(mc)["non_embedding"], "config.json"
    except (TypeError, ValueError) as e:
        raise ScalingError(f"{run}/config.json does not describe a model: {e}") from None


def read_run(run: str) -> Tuple[List[Point], List[str]]:
    """The points of one run directory and a note for every recipe left out. A run with several
    seeds gives one point per seed; a learning-rate sweep gives each recipe's points at its best
    rate (lowest mean final loss over seeds; compare.py) and notes the choice."""
    cfg = _read_json(os.path.join(run, "config.json"))
    try:
        steps, batch, seq = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["seq_len"])
        recipes = [str(r) for r in cfg["recipes"]]
        rates = learning_rates(cfg.get("lr", 2e-3))
        seeds = [int(cfg.get("seed", 0)) + i for i in range(int(cfg.get("seeds", 1)))]
    except (KeyError, TypeError, ValueError) as e:
        raise ScalingError(f"{run}/config.json is not an fp4swift train configuration (missing or bad {e})") from None
    arch = str(cfg.get("arch", "llama"))
    points: List[Point] = []
    notes: List[str] = []
    n: Optional[int] = None
    finals: Dict[Tuple[str, float, int], float] = {}
    for t in all_trials(recipes, rates, seeds):
        rel = trial_dir(t, len(rates), len(seeds))
        path = os.path.join(run, rel, "metrics.csv")
        if not os.path.isfile(path):
            notes.append(f"{run}: {rel} not started (no metrics.csv)")
            continue
        step, val = _last_metrics(path)
        if step < steps:
            notes.append(f"{run}: {rel} unfinished (step {step} of {steps})")
            continue
        if val is None or not math.isfinite(val) or val <= 0:
            notes.append(f"{run}: {rel} has no finite final validation loss (diverged, or not evaluated "
                         f"at the last step)")
            continue
        finals[(t.recipe, t.lr, t.seed)] = float(val)
    cmp = Comparison(recipes, rates, seeds, finals)
    for recipe in recipes:
        best = cmp.best_lr(recipe) if len(rates) > 1 else rates[0]
        if best is None:
            continue
        if len(rates) > 1:
            notes.append(f"{run}: {recipe} at its best learning rate {best:g} of {','.join(f'{v:g}' for v in rates)}")
        for seed in seeds:
            val = finals.get((recipe, best, seed))
            if val is None:
                continue
            if n is None:
                n = _non_embedding_params(run, cfg)[0]
            points.append(Point(recipe=recipe, n=float(n), d=float(steps * batch * seq), loss=val, run=run,
                                arch=arch))
    return points, notes


def collect_points(paths: Sequence[str]) -> Tuple[List[Point], List[str], int]:
    """(points, notes, number of runs) of every run named by or below `paths`."""
    runs = find_run_dirs(paths)
    if not runs:
        raise ScalingError(f"no runs found in {', '.join(paths)} (a run directory holds config.json and "
                           f"<recipe>/metrics.csv, as `fp4swift train` writes them)")
    points: List[Point] = []
    notes: List[str] = []
    for r in runs:
        p, n = read_run(r)
        points += p
        notes += n
    return points, notes, len(runs)


# ---------------------------------------------------------------------------------------
# the law and its fit


def predict(n: Any, d: Any, params: Dict[str, float], eff_n: float = 1.0, eff_d: float = 1.0) -> np.ndarray:
    """L(N, D) of the law with the base `params` (keys PARAM_NAMES) and a recipe's efficiencies."""
    lp = _log_pred(np.log(np.asarray(n, dtype=np.float64) * eff_n), np.log(np.asarray(d, dtype=np.float64) * eff_d),
                   _theta(params))[0]
    return np.exp(lp)


def _theta(params: Dict[str, float]) -> np.ndarray:
    """(log A, α, log B, β, γ, log E): the fitted coordinates."""
    return np.array([math.log(params["A"]), params["alpha"], math.log(params["B"]), params["beta"],
                     params["gamma"], math.log(params["E"])])


def _params(theta: np.ndarray) -> Dict[str, float]:
    a, alpha, b, beta, gamma, e = (float(v) for v in theta)
    return {"A": math.exp(a), "alpha": alpha, "B": math.exp(b), "beta": beta, "gamma": gamma, "E": math.exp(e)}


def _log_pred(ln_n: np.ndarray, ln_d: np.ndarray, theta: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """log L and the partial derivatives of log L (stable: log-sum-exp throughout)."""
    a, alpha, b, beta, gamma, e = theta
    u = a - alpha * ln_n
    v = b - beta * ln_d
    s = np.logaddexp(u, v)
    t = gamma * s
    p = np.logaddexp(t, e)
    wt = np.exp(t - p)            # ∂p/∂t
    wu = np.exp(u - s)            # ∂s/∂u
    parts = {"wt": wt, "wu": wu, "s": s}
    return p, parts


def _huber(r: np.ndarray, delta: float) -> Tuple[float, np.ndarray]:
    """Σ Huber_δ(r) / δ and its derivative with respect to r (divided by δ so that the
    gradients L-BFGS-B sees are O(1))."""
    a = np.abs(r)
    val = np.where(a <= delta, 0.5 * r * r / delta, a - 0.5 * delta)
    return float(val.sum()), np.clip(r / delta, -1.0, 1.0)


def _base_objective(theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray,
                    delta: float) -> Tuple[float, np.ndarray]:
    p, q = _log_pred(ln_n, ln_d, theta)
    f, g = _huber(p - ln_l, delta)
    gamma = theta[4]
    wt, wu, s = q["wt"], q["wu"], q["s"]
    dp = np.stack([wt * gamma * wu, -wt * gamma * wu * ln_n, wt * gamma * (1 - wu),
                   -wt * gamma * (1 - wu) * ln_d, wt * s, 1 - wt])
    return f, (dp * g).sum(axis=1)  # not dp @ g: a BLAS call whose threads spin-wait on a busy machine


def _eff_objective(x: np.ndarray, theta: np.ndarray, ln_n: np.ndarray, ln_d: np.ndarray, ln_l: np.ndarray,
                   delta: float) -> Tuple[float, np.ndarray]:
    p, q = _log_pred(ln_n + x[0], ln_d + x[1], theta)
    f, g = _huber(p - ln_l, delta)
    _, alpha, _, beta, gamma, _ = theta
    wt, wu = q["wt"], q["wu"]
    dp = np.stack([-wt * gamma * wu * alpha, -wt * gamma * (1 - wu) * beta])
    return f, (dp * g).sum(axis=1)  # not dp @ g: a BLAS call whose threads spin-wait on a busy machine


def _minimize():
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise ScalingError("the fit needs scipy: pip install scipy") from None
    return minimize


_BLAS_THREAD_SYMBOLS = (("openblas_get_num_threads", "openblas_set_num_threads"),
                        ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                        ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                        ("openblas_get_num_threads64_", "openblas_set_num_threads64_"))


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Every loaded OpenBLAS (numpy's, scipy's, the system one) on one thread for the block.

    L-BFGS-B makes thousands of tiny BLAS calls; with OpenBLAS's default pool of one thread per
    core, each call wakes workers that spin-wait, and on this project's busy 2-core machine the fit
    ran 10-25x slower (35 s instead of 2 s). Linux only (reads /proc/self/maps); elsewhere a no-op."""
    restore = []
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ln.split()[-1].startswith("/")})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _BLAS_THREAD_SYMBOLS:
            get_fn, set_fn = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get_fn is None or set_fn is None:
                continue
            get_fn.restype = ctypes.c_int
            n = int(get_fn())
            set_fn(ctypes.c_int(1))
            restore.append((set_fn, n))
            break
    try:
        yield
    finally:
        for set_fn, n in restore:
            set_fn(ctypes.c_int(n))


def _rms(r: np.ndarray) -> float:
    return float(np.sqrt(np.mean(r * r))) if r.size else float("nan")


@dataclass
class BaseFit:
    params: Dict[str, float]
    rms_log_residual: float
    objective: float
    starts: int
    at_bound: List[str] = field(default_factory=list)  # parameters that ended on a bound of the search


def fit_base(n: np.ndarray, d: np.ndarray, loss: np.ndarray, delta: float = 1e-3) -> BaseFit:
    """A, α, B, β, γ, E of the law (effN = effD = 1) fitted to the points; the best of a grid of
    L-BFGS-B starts (exponents and γ on a grid; A and B chosen so that each term carries half of
    the reducible loss at the points' geometric means; E a fraction of the smallest loss)."""
    minimize = _minimize()
    ln_n, ln_d, ln_l = np.log(n), np.log(d), np.log(loss)
    l_min = float(np.min(loss))
    bounds = [(-30.0, 80.0), (0.01, 3.0), (-30.0, 80.0), (0.01, 3.0), (0.05, 5.0),
              (math.log(1e-3), math.log(float(np.max(loss))))]
    lo, hi = np.array([b_[0] for b_ in bounds]), np.array([b_[1] for b_ in bounds])

    def run(x0: np.ndarray, maxiter: int) -> Any:
        return minimize(_base_objective, x0, args=(ln_n, ln_d, ln_l, delta), jac=True, method="L-BFGS-B",
                        bounds=bounds, options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-10})

    # stage 1: every start for a few dozen iterations; stage 2: the best few to convergence
    scouts = []
    for alpha, beta, gamma, e_frac, share in itertools.product((0.2, 0.5, 1.0), (0.2, 0.5, 1.0), (0.5, 1.0, 2.0),
                                                               (0.3, 0.7), (0.3, 0.7)):
        e0 = e_frac * l_min
        reducible = max(float(np.exp(ln_l.mean())) - e0, 1e-3) ** (1.0 / gamma)
        a0 = math.log(share * reducible) + alpha * float(ln_n.mean())
        b0 = math.log((1 - share) * reducible) + beta * float(ln_d.mean())
        res = run(np.clip(np.array([a0, alpha, b0, beta, gamma, math.log(e0)]), lo, hi), 40)
        if np.all(np.isfinite(res.x)) and math.isfinite(res.fun):
            scouts.append(res)
    starts = len(scouts)
    best: Optional[Any] = None
    for sc in sorted(scouts, key=lambda r: r.fun)[:8]:
        res = run(sc.x, 3000)
        if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ScalingError("the base fit did not converge from any start")
    p, _ = _log_pred(ln_n, ln_d, best.x)
    at_bound = [name for name, v, l_, h_ in zip(PARAM_NAMES, best.x, lo, hi)
                if abs(v - l_) < 1e-6 * max(1.0, abs(l_)) or abs(v - h_) < 1e-6 * max(1.0, abs(h_))]
    return BaseFit(params=_params(best.x), rms_log_residual=_rms(p - ln_l), objective=float(best.fun), starts=starts,
                   at_bound=at_bound)


@dataclass
class RecipeFit:
    recipe: str
    points: int
    eff_n: Optional[float]
    eff_d: Optional[float]
    rms_log_residual: Optional[float]
    at_bound: bool = False
    note: str = ""


def fit_efficiency(base: Dict[str, float], n: np.ndarray, d: np.ndarray, loss: np.ndarray,
                   delta: float = 1e-3) -> Tuple[float, float, float, bool]:
    """(effN, effD, rms log residual, at a bound) of one recipe's points with the base parameters frozen."""
    minimize = _minimize()
    theta = _theta(base)
    ln_n, ln_d, ln_l = np.log(n), np.log(d), np.log(loss)
    lo, hi = math.log(EFF_BOUNDS[0]), math.log(EFF_BOUNDS[1])
    best: Optional[Any] = None
    grid = (-2.0, -0.7, 0.0, 0.7)
    for x0 in itertools.product(grid, grid):
        res = minimize(_eff_objective, np.array(x0), args=(theta, ln_n, ln_d, ln_l, delta), jac=True,
                       method="L-BFGS-B", bounds=[(lo, hi), (lo, hi)],
                       options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10})
        if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    assert best is not None
    p, _ = _log_pred(ln_n + best.x[0], ln_d + best.x[1], theta)
    at_bound = bool(np.any(np.abs(best.x - lo) < 1e-6) or np.any(np.abs(best.x - hi) < 1e-6))
    return math.exp(best.x[0]), math.exp(best.x[1]), _rms(p - ln_l), at_bound


def _distinct(points: Sequence[Point]) -> int:
    return len({(p.n, p.d) for p in points})


@dataclass
class ScalingFit:
    base_recipe: str
    params: Dict[str, float]
    base: RecipeFit
    recipes: List[RecipeFit]
    points: List[Point]
    huber_delta: float
    starts: int
    notes: List[str] = field(default_factory=list)

    def table(self) -> List[RecipeFit]:
        """The base recipe's row, then every other recipe's."""
        return [self.base] + self.recipes

    def eff(self, recipe: str) -> Optional[Tuple[float, float]]:
        """(effN, effD) of a recipe, or None when it was not fitted (too few points)."""
        r = next((r for r in self.table() if r.recipe == recipe), None)
        return None if r is None or r.eff_n is None or r.eff_d is None else (r.eff_n, r.eff_d)

    def predict(self, n: Any, d: Any, eff_n: float = 1.0, eff_d: float = 1.0) -> np.ndarray:
        """L(N, D) of the fitted law (the base parameters) with a recipe's efficiencies."""
        return predict(n, d, self.params, eff_n, eff_d)

    def to_dict(self) -> Dict[str, Any]:
        """The content of scaling_fit.json."""
        pts = []
        for p in self.points:
            e = self.eff(p.recipe)
            fitted = float(predict(p.n, p.d, self.params, *e)) if e is not None else None
            pts.append(dict(asdict(p), fitted_loss=fitted))
        return {"law": LAW, "base_recipe": self.base_recipe, "params": self.params, "huber_delta": self.huber_delta,
                "starts": self.starts,
                "recipes": {r.recipe: {k: v for k, v in asdict(r).items() if k != "recipe"} for r in self.table()},
                "points": pts, "notes": self.notes}


def fit(points: Sequence[Point], base: str = "fp32", recipes: Optional[Sequence[str]] = None,
        delta: float = 1e-3) -> ScalingFit:
    """The base fit on `base`'s points, then effN/effD of every other recipe (or of `recipes`)."""
    if not (delta > 0 and math.isfinite(delta)):
        raise ScalingError(f"--huber-delta must be a positive number, got {delta}")
    base_pts = [p for p in points if p.recipe == base]
    if not base_pts:
        have = sorted({p.recipe for p in points})
        raise ScalingError(f"no finished {base} runs among the points (found: {', '.join(have) or 'none'}); "
                           f"the {base} points fix A, alpha, B, beta, gamma, E (choose another with --base)")
    k = _distinct(base_pts)
    if k < MIN_BASE_POINTS:
        raise ScalingError(f"fitting A, alpha, B, beta, gamma, E needs at least {MIN_BASE_POINTS} {base} points "
                           f"with distinct (N, D), found {k}; train more sizes or token budgets")
    if len({p.n for p in base_pts}) < 2 or len({p.d for p in base_pts}) < 2:
        raise ScalingError(f"the {base} points need at least 2 model sizes and 2 token budgets, found "
                           f"{len({p.n for p in base_pts})} and {len({p.d for p in base_pts})}")
    others = sorted({p.recipe for p in points if p.recipe != base}) if recipes is None else \
        [r for r in recipes if r != base]
    missing = [r for r in others if not any(p.recipe == r for p in points)]
    if missing:
        raise ScalingError(f"--recipes: no finished runs of {', '.join(missing)}")
    _minimize()  # scipy (and its OpenBLAS) loaded, or the one-line error
    with one_blas_thread():
        return _fit(points, base, base_pts, others, delta)


def _columns(points: Sequence[Point]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L) of the points as float64 arrays."""
    return tuple(np.array([getattr(p, a) for p in points], dtype=np.float64) for a in ("n", "d", "loss"))  # type: ignore


def _fit(points: Sequence[Point], base: str, base_pts: List[Point], others: List[str], delta: float) -> ScalingFit:
    k = _distinct(base_pts)
    bf = fit_base(*_columns(base_pts), delta)
    notes: List[str] = []
    if k == MIN_BASE_POINTS:
        notes.append(f"{base}: only as many points as parameters; the base parameters are barely determined")
    if bf.at_bound:
        notes.append(f"{base}: {', '.join(bf.at_bound)} ended on a bound of the search: the points do not pin "
                     f"{'it' if len(bf.at_bound) == 1 else 'them'} down (effN, effD are still read off the same "
                     f"fitted surface)")
    if len({p.arch for p in points}) > 1:
        notes.append(f"the points mix architectures ({', '.join(sorted({p.arch for p in points}))})")
    fits = []
    for r in others:
        pts = [p for p in points if p.recipe == r]
        if _distinct(pts) < MIN_RECIPE_POINTS:
            fits.append(RecipeFit(r, len(pts), None, None, None,
                                  note=f"needs at least {MIN_RECIPE_POINTS} points with distinct (N, D)"))
            continue
        en, ed, res, at_bound = fit_efficiency(bf.params, *_columns(pts), delta)
        fits.append(RecipeFit(r, len(pts), en, ed, res, at_bound,
                              note=f"at the bound {EFF_BOUNDS} of the search" if at_bound else ""))
    kept = [p for p in points if p.recipe == base or p.recipe in others]
    return ScalingFit(base, bf.params, RecipeFit(base, len(base_pts), 1.0, 1.0, bf.rms_log_residual, note="fixed"),
                      fits, kept, delta, bf.starts, notes)


# ---------------------------------------------------------------------------------------
# output


def format_table(f: ScalingFit) -> str:
    p = f.params
    lines = [f"{LAW}",
             f"base ({f.base_recipe}, {f.base.points} points, Huber delta {f.huber_delta:g} on log L, best of "
             f"{f.starts} starts): A = {p['A']:.4g}, alpha = {p['alpha']:.4f}, B = {p['B']:.4g}, "
             f"beta = {p['beta']:.4f}, gamma = {p['gamma']:.4f}, E = {p['E']:.4f}",
             ""]
    head = f"{'recipe':24} {'points':>6} {'effN':>9} {'effD':>9} {'fit residual':>13}"
    lines += [head, "-" * len(head)]
    for r in f.table():
        fixed = r.recipe == f.base_recipe

        def num(v: Optional[float]) -> str:
            return "n/a" if v is None else ("1 (fixed)" if fixed else f"{v:.3f}")

        res = "n/a" if r.rms_log_residual is None else f"{r.rms_log_residual * 100:.2f}%"
        lines.append(f"{r.recipe:24} {r.points:6d} {num(r.eff_n):>9} {num(r.eff_d):>9} {res:>13}"
                     + (f"  ({r.note})" if r.note and not fixed else ""))
    lines.append("")
    lines.append("fit residual = RMS of log L_fit - log L over the recipe's points (~ relative error). "
                 "effN < 1: the recipe is worth fewer parameters, effD < 1: fewer tokens "
                 "(Quartet reports effN ~ 0.64, effD ~ 0.94 for its FP4 recipe).")
    return "\n".join(lines)


def write_outputs(out: str, f: ScalingFit) -> Dict[str, Optional[str]]:
    """scaling_fit.json, scaling_fit.csv and (with matplotlib) scaling_law.png in `out`."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ScalingError(f"cannot create --out {out}: {e.strerror or e}") from None
    js = os.path.join(out, "scaling_fit.json")
    atomic_write_text(js, json.dumps(f.to_dict(), indent=2) + "\n")
    rows = ["recipe,points,eff_n,eff_d,rms_log_residual,note"]
    for r in f.table():
        rows.append(",".join(["" if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in
                              (r.recipe, r.points, r.eff_n, r.eff_d, r.rms_log_residual)]) + "," +
                    json.dumps(r.note))
    cs = os.path.join(out, "scaling_fit.csv")
    atomic_write_text(cs, "\n".join(rows) + "\n")
    png = plot_scaling(os.path.join(out, "scaling_law.png"), f)
    return {"json": js, "csv": cs, "png": png}


def scaling_law_command(args: Any) -> int:
    """`fp4swift scaling-law`: returns the exit status (0 ok, 2 bad input)."""

    def err(msg: str) -> int:
        print(f"fp4swift scaling-law: error: {msg}", file=sys.stderr)
        return 2

    recipes = None
    if getattr(args, "recipes", None):
        recipes = [s.strip() for s in args.recipes.split(",") if s.strip()]
    try:
        points, notes, n_runs = collect_points(args.runs)
        base = getattr(args, "base", "fp32") or "fp32"
        f = fit(points, base=base, recipes=recipes, delta=getattr(args, "huber_delta", 1e-3))
        out = args.out or args.runs[0]
        files = write_outputs(out, f)
    except ScalingError as e:
        return err(str(e))
    except OSError as e:
        return err(f"cannot write the fit: {e}")
    print(f"{len(points)} points from {n_runs} runs (N = non-embedding parameters, D = tokens trained, "
          f"L = final validation loss)")
    for n in notes + f.notes:
        print(f"  note: {n}")
    print()
    print(format_table(f))
    print()
    print(f"wrote {files['json']}, {files['csv']}"
          + (f", {files['png']}" if files["png"] else " (no plot: matplotlib missing)"))
    return 0
