"""The files of a run directory: metrics.csv, checkpoint.pt, the runs/latest link, summary.md /
summary.csv and run.json (the layout is in runner.py's docstring), and the per-recipe result
they are written from."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .compare import Comparison, Gap, format_pm
from .config import RunError, TrainConfig
from .files import atomic_write_bytes, atomic_write_text
from .model import count_parameters

CHECKPOINT_VERSION = 1


#: "switched": 1 once a target-precision schedule has switched the recipe's layers (else 0; empty
#: without a schedule).
METRIC_FIELDS = ("step", "train_loss", "val_loss", "tokens_per_s", "elapsed_s", "switched")


def atomic_torch_save(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def metrics_csv(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(METRIC_FIELDS)
    for r in rows:
        w.writerow([_fmt(r.get(k)) for k in METRIC_FIELDS])
    return out.getvalue()


def read_metrics(path: str) -> List[Dict[str, Optional[float]]]:
    """metrics.csv back as dicts (empty cells -> None)."""
    with open(path, newline="") as fh:
        rows = []
        for r in csv.DictReader(fh):
            # .get: metrics written before a column existed read it as empty.
            rows.append({k: (None if r.get(k, "") in ("", None) else (int(r[k]) if k in ("step", "switched") else float(r[k])))
                         for k in METRIC_FIELDS})
        return rows


def load_checkpoint(path: str, mmap: bool = False) -> Dict[str, Any]:
    """A checkpoint written by the runner (model, optimizer, RNG, step, metrics, config);
    mmap=True maps its tensors instead of reading them (to look at the other fields)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise RunError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise RunError(f"{path} is not an fp4swift training checkpoint (version {CHECKPOINT_VERSION})")
    return ck


def default_out_dir(root: str = "runs") -> str:
    """runs/<YYYYmmdd-HHMMSS>, with -2, -3, ... appended if that directory exists."""
    base = os.path.join(root, _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out, i = base, 1
    while os.path.exists(out):
        i += 1
        out = f"{base}-{i}"
    return out


def update_latest_link(out: str) -> None:
    """runs/latest -> the newest default run (a relative symlink, replaced atomically)."""
    parent = os.path.dirname(os.path.abspath(out))
    link = os.path.join(parent, "latest")
    if os.path.exists(link) and not os.path.islink(link):
        return
    tmp = os.path.join(parent, f".latest.{os.getpid()}.tmp")
    try:
        os.symlink(os.path.basename(os.path.abspath(out)), tmp)
        os.replace(tmp, link)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


@dataclass
class RecipeResult:
    """One trial's outcome: a recipe trained at one peak learning rate from one seed."""

    recipe: str
    rows: List[Dict[str, Any]]
    train_time: float       # seconds spent in training steps (excluding evaluation)
    tokens: int             # training tokens processed
    diverged_at: Optional[int] = None
    switch: Optional[Tuple[int, str]] = None  # (step, target) of a target-precision schedule
    lr: float = math.nan
    seed: int = 0

    @property
    def final_val(self) -> Optional[float]:
        for r in reversed(self.rows):
            if r.get("val_loss") is not None:
                return float(r["val_loss"])
        return None

    @property
    def steps(self) -> int:
        return int(self.rows[-1]["step"]) if self.rows else 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_time if self.train_time > 0 else float("nan")

    def status(self, steps: int) -> str:
        s = (f"diverged at step {self.diverged_at}" if self.diverged_at else
             ("ok" if self.steps >= steps else f"unfinished (step {self.steps})"))
        return s + (f"; {self.switch[1]} from step {self.switch[0]}" if self.switch else "")


def comparison(results: Sequence[RecipeResult], cfg: TrainConfig,
               seeds: Optional[Sequence[int]] = None) -> Comparison:
    """The final validation losses of every trial (unfinished or diverged: nan), for compare.py;
    seeds: the run's seeds (default cfg.seed_list)."""
    finals: Dict[Tuple[str, float, int], float] = {}
    for r in results:
        v = r.final_val
        ok = r.diverged_at is None and r.steps >= cfg.steps and v is not None and math.isfinite(v)
        finals[(r.recipe, r.lr, r.seed)] = float(v) if ok else math.nan  # type: ignore[arg-type]
    return Comparison(cfg.recipes, cfg.learning_rates, cfg.seed_list if seeds is None else seeds, finals)


def _tokens_per_s(results: Sequence[RecipeResult], recipe: str, lr: float) -> float:
    """Training tokens per second of a recipe at a rate, over its seeds (total tokens / total time)."""
    sel = [r for r in results if r.recipe == recipe and r.lr == lr]
    t = sum(r.train_time for r in sel)
    return sum(r.tokens for r in sel) / t if t > 0 else math.nan


def _f(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _gap_text(gap: Optional[Gap]) -> str:
    if gap is None:
        return "n/a"
    if not math.isfinite(gap.half_width):
        return f"{gap.mean:+.2f}%"
    lo, hi = gap.interval
    return f"{gap.mean:+.2f}% [{lo:+.2f}, {hi:+.2f}]"


def _comparison_table(cmp: Comparison, results: Sequence[RecipeResult], cfg: TrainConfig, basis: str) -> List[str]:
    many = len(cmp.seeds) > 1
    rows = cmp.rows(basis)
    ref_row = next((r for r in rows if r["recipe"] == cmp.reference), None)
    ref_tps = _tokens_per_s(results, str(ref_row["recipe"]), float(ref_row["lr"])) if ref_row else math.nan  # type: ignore[arg-type]
    head = "| recipe | lr | final val loss" + (" (mean ± std)" if many else "") + \
        (" | per seed" if many else "") + " | gap to fp32" + (" (95% interval)" if many else "") + \
        (" | verdict" if many else "") + " | tokens/s | relative cost | status |"
    lines = [head, "|---|---:|---:|" + ("---|" if many else "") + "---:|" + ("---|" if many else "") + "---:|---:|---|"]
    for r in rows:
        recipe, lr = str(r["recipe"]), float(r["lr"])  # type: ignore[arg-type]
        sel = [x for x in results if x.recipe == recipe and x.lr == lr]
        tps = _tokens_per_s(results, recipe, lr)
        cost = ref_tps / tps if math.isfinite(ref_tps) and tps > 0 else None
        status = "; ".join(sorted({x.status(cfg.steps) for x in sel})) or "not started"
        gap = "+0.00%" if recipe == cmp.reference else _gap_text(r["gap"])  # type: ignore[arg-type]
        cells = [recipe, f"{lr:g}",
                 format_pm(float(r["mean"]), float(r["std"]), int(r["seeds"]), len(cmp.seeds))]  # type: ignore[arg-type]
        if many:
            per = r["per_seed"]
            cells.append(", ".join(_f(per[s], ".4f") for s in sorted(per)))  # type: ignore[union-attr]
        cells.append(gap)
        if many:
            cells.append(str(r["verdict"]) or "reference")
        cells += [_f(tps, ",.0f"), (_f(cost, ".2f") + "x") if cost is not None else "n/a", status]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _sweep_table(cmp: Comparison) -> List[str]:
    lines = ["| recipe | " + " | ".join(f"lr {lr:g}" for lr in cmp.rates) + " | best |",
             "|---|" + "---:|" * len(cmp.rates) + "---:|"]
    for recipe in cmp.recipes:
        best = cmp.best_lr(recipe)
        cells = []
        for lr in cmp.rates:
            st = cmp.stats[(recipe, lr)]
            c = format_pm(st.mean, st.std, st.n, len(cmp.seeds)) if st.complete else \
                ("not run" if st.n == 0 else "diverged/unfinished")
            cells.append(f"**{c}**" if lr == best else c)
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {'n/a' if best is None else f'{best:g}'} |")
    return lines


def summarize(results: List[RecipeResult], cfg: TrainConfig,
              seeds: Optional[Sequence[int]] = None) -> Tuple[Comparison, str]:
    """(comparison, markdown) of the final tables: per recipe the final validation loss (mean ±
    std and each seed's when there are several seeds), the gap to fp32 paired by seed with its
    95% interval, the verdict, tokens/s and relative cost (tokens/s of fp32 / tokens/s of the
    recipe); with a learning-rate sweep, the sweep table, then the comparison at each recipe's
    best rate and at fp32's best rate."""
    cmp = comparison(results, cfg, seeds)
    sweep = len(cmp.rates) > 1
    lines: List[str] = []
    if sweep:
        lines += ["Learning-rate sweep: final validation loss" + (" (mean ± std over seeds)" if len(cmp.seeds) > 1
                                                               else "") + "; bold = the recipe's best rate.", ""]
        lines += _sweep_table(cmp) + ["", "Each recipe at its best learning rate:", ""]
    lines += _comparison_table(cmp, results, cfg, "best_lr")
    lines += ["", cmp.verdict_line("best_lr")]
    if sweep and cmp.reference is not None:
        lines += ["", f"Every recipe at fp32's best learning rate ({cmp.shared_lr():g}):", ""]
        lines += _comparison_table(cmp, results, cfg, "shared_lr")
        lines += ["", cmp.verdict_line("shared_lr")]
    lines.append("")
    lines.append("gap = (val - val_fp32) / val_fp32, taken seed by seed (same initialization and data order) and "
                 "averaged; the interval is a 95% Student-t interval over seeds. A recipe is called lower or higher "
                 "than fp32 only when its seeds' range of final losses does not overlap fp32's and the interval "
                 "excludes 0; otherwise it is within noise. tokens/s = training tokens / time in training steps (evaluation excluded), over all "
                 "seeds; relative cost = tokens/s of fp32 / tokens/s of the recipe. "
                 "FP4 GEMMs whose operands are both FP4 codes run on the codes with integer SIMD (recipe gemm='packed', "
                 "the default; numerics.md §11), the others on fake-quantized float32 operands with OpenBLAS; fp32 "
                 "is torch's nn.Linear. Relative cost is measured on this CPU, not FP4 hardware. "
                 "A negative gap is a lower loss than fp32.")
    return cmp, "\n".join(lines)


def run_metadata(cfg: TrainConfig, model: nn.Module, results: Sequence[RecipeResult]) -> Dict[str, Any]:
    """The content of DIR/run.json: what a scaling-law fit reads besides metrics.csv.

    parameters.non_embedding leaves out the token (and gpt2's position) embedding tables but
    counts an untied LM head; tokens = steps trained x batch_size x seq_len. "trials" lists every
    finished trial (recipe, lr, seed); "recipes" gives each recipe at its best learning rate:
    the mean final validation loss over seeds and each seed's."""
    def finite(v: Optional[float]) -> Optional[float]:
        return v if v is not None and math.isfinite(v) else None

    trials = [{"recipe": r.recipe, "lr": r.lr, "seed": r.seed, "steps": r.steps, "tokens": r.tokens,
               "final_val_loss": finite(r.final_val), "status": r.status(cfg.steps).split(";")[0],
               "switch": {"step": r.switch[0], "to": r.switch[1]} if r.switch else None} for r in results]
    recipes = {}
    cmp = comparison(results, cfg)
    for row in cmp.rows("best_lr"):
        name, lr = str(row["recipe"]), float(row["lr"])  # type: ignore[arg-type]
        sel = [t for t in trials if t["recipe"] == name and t["lr"] == lr]
        if not sel:
            continue
        per = {str(t["seed"]): t["final_val_loss"] for t in sel}
        statuses = [str(t["status"]) for t in sel]
        recipes[name] = {"steps": min(int(t["steps"]) for t in sel), "tokens": min(int(t["tokens"]) for t in sel),
                         "lr": lr, "seeds": len(sel),
                         "final_val_loss": finite(float(row["mean"])),  # type: ignore[arg-type]
                         "final_val_loss_std": finite(float(row["std"])),  # type: ignore[arg-type]
                         "final_val_loss_per_seed": per,
                         "status": next((x for x in statuses if x != "ok"), "ok"),
                         "switch": sel[0]["switch"]}
    return {
        "arch": cfg.arch,
        "model": cfg.model_config().label,
        "parameters": {"total": count_parameters(model),
                       "non_embedding": count_parameters(model, exclude_embeddings=True)},
        "tokens_per_step": cfg.tokens_per_step,
        "steps": cfg.steps,
        "tokens": cfg.steps * cfg.tokens_per_step,
        "tokens_budget": cfg.tokens,
        "learning_rates": cfg.learning_rates,
        "seeds": cfg.seed_list,
        "recipes": recipes,
        "trials": trials,
    }


#: Columns of DIR/summary.csv (one row per trial).
SUMMARY_FIELDS = ("recipe", "lr", "seed", "final_val_loss", "gap_to_fp32_pct", "tokens_per_s", "relative_cost",
                  "steps", "status", "params", "non_embedding_params", "tokens")

#: Columns of DIR/comparison.csv (one row per recipe and basis: its best rate, fp32's best rate).
COMPARISON_FIELDS = ("recipe", "basis", "lr", "seeds", "final_val_loss_mean", "final_val_loss_std",
                     "final_val_loss_min", "final_val_loss_max", "gap_to_fp32_pct", "gap_ci95_low", "gap_ci95_high",
                     "verdict")


def _csv(fields: Sequence[str], rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in fields})
    return buf.getvalue()


def write_summary(out: str, results: List[RecipeResult], cfg: TrainConfig, n_params: int,
                  wall: Optional[float] = None, n_non_embedding: Optional[int] = None,
                  notes: Sequence[str] = ()) -> str:
    """DIR/summary.md (returned), summary.csv (every trial) and comparison.csv (every recipe);
    `notes`: paragraphs appended to summary.md (e.g. how a data-parallel run's sharding affects
    each recipe, train/distributed.py)."""
    cmp, md = summarize(results, cfg)
    if notes:
        md += "\n\n" + "\n\n".join(notes)
    mc = cfg.model_config()
    rates = ",".join(f"{v:g}" for v in cfg.learning_rates)
    head = (f"fp4swift train: {n_params:,}-parameter "
            + (f"({n_non_embedding:,} non-embedding) " if n_non_embedding is not None else "")
            + f"{mc.label} byte-level model (d_model {cfg.d_model}, {cfg.layers} layers, {cfg.heads} heads, "
            f"seq {cfg.seq_len}, init {cfg.init}), "
            f"{cfg.steps} steps x batch {cfg.batch_size} = {cfg.steps * cfg.tokens_per_step:,} tokens, "
            f"lr {rates}, seed{'s' if cfg.seeds > 1 else ''} {','.join(map(str, cfg.seed_list))}, "
            f"data: {cfg.data or 'Python stdlib .py files'}"
            + (f"; wall time {wall:.0f} s" if wall is not None else ""))
    md = head + "\n\n" + md
    atomic_write_text(os.path.join(out, "summary.md"), "# " + md + "\n")
    ref = {(r.lr, r.seed): r for r in results if r.recipe == "fp32"}
    rows = []
    for r in results:
        v, f = r.final_val, ref.get((r.lr, r.seed))
        fv = f.final_val if f is not None else None
        ok = v is not None and fv is not None and math.isfinite(v) and math.isfinite(fv) and fv != 0
        tps = r.tokens_per_s
        rows.append({"recipe": r.recipe, "lr": r.lr, "seed": r.seed, "final_val_loss": v,
                     "gap_to_fp32_pct": (v - fv) / fv * 100 if ok else None,  # type: ignore[operator]
                     "tokens_per_s": tps,
                     "relative_cost": f.tokens_per_s / tps if f is not None and tps > 0 else None,
                     "steps": r.steps, "status": r.status(cfg.steps), "params": n_params,
                     "non_embedding_params": n_non_embedding, "tokens": r.tokens})
    atomic_write_text(os.path.join(out, "summary.csv"), _csv(SUMMARY_FIELDS, rows))
    crow = []
    for basis in ("best_lr", "shared_lr") if len(cmp.rates) > 1 else ("best_lr",):
        for r in cmp.rows(basis):
            gap: Optional[Gap] = r["gap"]  # type: ignore[assignment]
            crow.append({"recipe": r["recipe"], "basis": basis, "lr": r["lr"], "seeds": r["seeds"],
                         "final_val_loss_mean": r["mean"], "final_val_loss_std": r["std"],
                         "final_val_loss_min": r["low"], "final_val_loss_max": r["high"],
                         "gap_to_fp32_pct": gap.mean if gap else None,
                         "gap_ci95_low": gap.interval[0] if gap and math.isfinite(gap.half_width) else None,
                         "gap_ci95_high": gap.interval[1] if gap and math.isfinite(gap.half_width) else None,
                         "verdict": r["verdict"]})
    atomic_write_text(os.path.join(out, "comparison.csv"), _csv(COMPARISON_FIELDS, crow))
    return md
