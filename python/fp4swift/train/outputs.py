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
    recipe: str
    rows: List[Dict[str, Any]]
    train_time: float       # seconds spent in training steps (excluding evaluation)
    tokens: int             # training tokens processed
    diverged_at: Optional[int] = None
    switch: Optional[Tuple[int, str]] = None  # (step, target) of a target-precision schedule

    @property
    def final_val(self) -> Optional[float]:
        for r in reversed(self.rows):
            if r.get("val_loss") is not None:
                return float(r["val_loss"])
        return None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_time if self.train_time > 0 else float("nan")


def summarize(results: List[RecipeResult]) -> Tuple[List[Dict[str, Any]], str]:
    """(rows, markdown) of the final table: recipe, final validation loss, gap to fp32 (%),
    tokens/s and relative cost (tokens/s of fp32 / tokens/s of the recipe)."""
    ref = next((r for r in results if r.recipe == "fp32"), None)
    ref_val = ref.final_val if ref else None
    ref_tps = ref.tokens_per_s if ref else None
    table = []
    for r in results:
        v = r.final_val
        gap = (v - ref_val) / ref_val * 100 if (ref_val and v is not None and math.isfinite(v)) else None
        cost = ref_tps / r.tokens_per_s if (ref_tps and r.tokens_per_s > 0) else None
        table.append({"recipe": r.recipe, "final_val_loss": v, "gap_to_fp32_pct": gap,
                      "tokens_per_s": r.tokens_per_s, "relative_cost": cost,
                      "steps": r.rows[-1]["step"] if r.rows else 0,
                      "status": (f"diverged at step {r.diverged_at}" if r.diverged_at else "ok")
                      + (f"; {r.switch[1]} from step {r.switch[0]}" if r.switch else "")})

    def f(v: Optional[float], spec: str) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    lines = ["| recipe | final val loss | gap to fp32 | tokens/s | relative cost | status |",
             "|---|---:|---:|---:|---:|---|"]
    for t in table:
        gap = "n/a" if t["gap_to_fp32_pct"] is None else f"{t['gap_to_fp32_pct']:+.2f}%"
        lines.append(f"| {t['recipe']} | {f(t['final_val_loss'], '.4f')} | {gap} | {f(t['tokens_per_s'], ',.0f')} | "
                     f"{f(t['relative_cost'], '.2f') + ('x' if t['relative_cost'] is not None else '')} | {t['status']} |")
    ok = [t for t in table if t["recipe"] != "fp32" and t["final_val_loss"] is not None
          and math.isfinite(t["final_val_loss"]) and t["status"].startswith("ok")]
    if ok:
        best = min(ok, key=lambda t: t["final_val_loss"])
        if ref_val is not None:
            lines.append("")
            lines.append(f"Best low-precision recipe: **{best['recipe']}** (validation loss {best['final_val_loss']:.4f}, "
                         f"{best['gap_to_fp32_pct']:+.2f}% vs fp32 {ref_val:.4f}).")
        else:
            lines.append("")
            lines.append(f"Best recipe: **{best['recipe']}** (validation loss {best['final_val_loss']:.4f}).")
    lines.append("")
    lines.append("gap = (val - val_fp32) / val_fp32; tokens/s = training tokens / time in training steps "
                 "(evaluation excluded); relative cost = tokens/s of fp32 / tokens/s of the recipe. "
                 "FP4 GEMMs whose operands are both FP4 codes run on the codes with integer SIMD (recipe gemm='packed', "
                 "the default; numerics.md §11), the others on fake-quantized float32 operands with OpenBLAS; fp32 "
                 "is torch's nn.Linear. Relative cost is measured on this CPU, not FP4 hardware. "
                 "A negative gap is a lower loss than fp32.")
    return table, "\n".join(lines)


def run_metadata(cfg: TrainConfig, model: nn.Module, results: Sequence[RecipeResult]) -> Dict[str, Any]:
    """The content of DIR/run.json: what a scaling-law fit reads besides metrics.csv.

    parameters.non_embedding leaves out the token (and gpt2's position) embedding tables but
    counts an untied LM head; tokens = steps trained x batch_size x seq_len."""
    recipes = {}
    for r in results:
        steps = r.rows[-1]["step"] if r.rows else 0
        v = r.final_val
        recipes[r.recipe] = {"steps": steps, "tokens": r.tokens,
                             "final_val_loss": v if v is not None and math.isfinite(v) else None,
                             "status": f"diverged at step {r.diverged_at}" if r.diverged_at else
                             ("ok" if steps >= cfg.steps else "unfinished"),
                             "switch": {"step": r.switch[0], "to": r.switch[1]} if r.switch else None}
    return {
        "arch": cfg.arch,
        "model": cfg.model_config().label,
        "parameters": {"total": count_parameters(model),
                       "non_embedding": count_parameters(model, exclude_embeddings=True)},
        "tokens_per_step": cfg.tokens_per_step,
        "steps": cfg.steps,
        "tokens": cfg.steps * cfg.tokens_per_step,
        "tokens_budget": cfg.tokens,
        "recipes": recipes,
    }


#: Columns of DIR/summary.csv.
SUMMARY_FIELDS = ("recipe", "final_val_loss", "gap_to_fp32_pct", "tokens_per_s", "relative_cost", "steps", "status",
                  "params", "non_embedding_params", "tokens")


def write_summary(out: str, results: List[RecipeResult], cfg: TrainConfig, n_params: int,
                  wall: Optional[float] = None, n_non_embedding: Optional[int] = None,
                  notes: Sequence[str] = ()) -> str:
    """summary.md and summary.csv; `notes`: paragraphs appended to summary.md (e.g. how a
    data-parallel run's sharding affects each recipe, train/distributed.py)."""
    table, md = summarize(results)
    if notes:
        md += "\n\n" + "\n\n".join(notes)
    mc = cfg.model_config()
    head = (f"fp4swift train: {n_params:,}-parameter "
            + (f"({n_non_embedding:,} non-embedding) " if n_non_embedding is not None else "")
            + f"{mc.label} byte-level model (d_model {cfg.d_model}, {cfg.layers} layers, {cfg.heads} heads, "
            f"seq {cfg.seq_len}), "
            f"{cfg.steps} steps x batch {cfg.batch_size} = {cfg.steps * cfg.tokens_per_step:,} tokens, "
            f"lr {cfg.lr:g}, seed {cfg.seed}, data: {cfg.data or 'Python stdlib .py files'}"
            + (f"; wall time {wall:.0f} s" if wall is not None else ""))
    md = head + "\n\n" + md
    atomic_write_text(os.path.join(out, "summary.md"), "# " + md + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_FIELDS), lineterminator="\n")
    w.writeheader()
    for t, r in zip(table, results):
        t = dict(t, params=n_params, non_embedding_params=n_non_embedding, tokens=r.tokens)
        w.writerow({k: _fmt(t[k]) for k in SUMMARY_FIELDS})
    atomic_write_text(os.path.join(out, "summary.csv"), buf.getvalue())
    return md
