"""`fp4swift train`: one small LLaMA-style (or, with --arch gpt2, GPT-2-style) model trained
under several precision recipes, side by side, from the same initialization and on the same
data order.

Output directory layout (DIR = --out, default runs/<YYYYmmdd-HHMMSS>, with runs/latest
pointing at the newest default run):

    DIR/config.json              the run's configuration (what --resume restores)
    DIR/<recipe>/metrics.csv     step, train_loss, val_loss, tokens_per_s, elapsed_s
    DIR/<recipe>/checkpoint.pt   model, optimizer, RNG, step, metrics so far (atomic writes)
    DIR/loss_curves.png          training and validation loss of every recipe
    DIR/run.json                 what a scaling-law fit needs: arch, parameter counts (total and
                                 non-embedding), tokens per step, and per recipe the steps and
                                 tokens trained and the final validation loss (rewritten at the
                                 start of every session and after every recipe)
    DIR/summary.md, summary.csv  final validation loss, gap to fp32, tokens/s, relative cost,
                                 parameters (total, non-embedding) and tokens trained

The length of a run is --steps or a token budget --tokens N (steps = ceil(N / (batch·seq_len));
config.json then holds both the budget and the derived steps).

Recipes run one after another (each alone on the machine, so tokens/s compare fairly).
The batch of step s is a pure function of (seed, s), the learning rate a pure function of s,
and nothing else draws random numbers, so a resumed run reproduces the uninterrupted one
bit for bit.
"""
from __future__ import annotations

import copy
import csv
import datetime as _dt
import io
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .data import Corpus, DataError, check_seq_len, load_corpus, train_batch, val_batches
from .files import atomic_write_bytes, atomic_write_text
from .model import ARCHS, ModelConfig, build_model, count_parameters

CHECKPOINT_VERSION = 1
#: "switched": 1 once a target-precision schedule has switched the recipe's layers (else 0; empty
#: without a schedule).
METRIC_FIELDS = ("step", "train_loss", "val_loss", "tokens_per_s", "elapsed_s", "switched")
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


# ---------------------------------------------------------------------------------------
# recipes


def available_recipes() -> List[str]:
    import fp4swift as f4

    names = list(f4.recipes())
    return names if "fp32" in names else ["fp32"] + names


def _parse_value(v: str) -> Any:
    low = v.strip().lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v.strip()


#: Recipe-spec keys of the target-precision schedule (not Recipe fields).
SCHEDULE_KEYS = ("switch_at", "switch_to")


def _split_schedule(spec: str) -> Tuple[str, Dict[str, str]]:
    """(the spec without its schedule keys, {key: value} of those keys)."""
    name, *mods = spec.split(":")
    keep, sched = [name], {}
    for m in mods:
        key, eq, val = m.partition("=")
        if eq and key.strip() in SCHEDULE_KEYS:
            sched[key.strip()] = val.strip()
        else:
            keep.append(m)
    return ":".join(keep), sched


def recipe_schedule(spec: str, cfg: "TrainConfig") -> Optional[Tuple[float, str]]:
    """(switch_at, target) of the target-precision schedule of a recipe spec, or None.

    `--switch-at P` (cfg.switch_at) applies to every quantized recipe; a spec's own
    `:switch_at=P` / `:switch_at=off` and `:switch_to=NAME` override it for that recipe, so one
    run can hold `zhou2025` and `zhou2025:switch_at=0.9` side by side."""
    base, sched = _split_schedule(spec)
    if base.split(":")[0] == "fp32":
        return None
    at: Optional[float] = cfg.switch_at
    raw = sched.get("switch_at")
    if raw is not None:
        v = _parse_value(raw)
        if v is False:
            at = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            at = float(v)
        else:
            raise RunError(f"recipe {spec!r}: switch_at must be a fraction of training in [0, 1] or off, got {raw!r}")
    if at is None:
        return None
    target = sched.get("switch_to", cfg.switch_to)
    resolve_recipe(target)  # a known recipe (fp32 included)
    return at, target


def resolve_recipe(spec: str) -> Any:
    """A recipe spec -> None (fp32: the unconverted model) or an fp4swift.Recipe.

    A spec is a recipe name, optionally with ablation overrides of the recipe's fields:
    `wang2025:dge=off`, `wang2025:alpha=0.97:compensate=off`, `wang2025:granularity=tensor`
    (fields and shortcuts of fp4swift.Recipe.replace), and the schedule keys of
    `recipe_schedule` (`zhou2025:switch_at=0.9:switch_to=fp32`). Raises RunError on a bad spec."""
    import fp4swift as f4

    name, *mods = _split_schedule(spec)[0].split(":")
    known = available_recipes()
    if name not in known:
        raise RunError(f"unknown recipe {name!r}; available: {', '.join(known)}")
    if name == "fp32":
        if mods:
            raise RunError(f"recipe {spec!r}: fp32 (the unconverted model) takes no overrides")
        return None
    try:
        recipe = f4.Recipe.get(name)
    except (NotImplementedError, ValueError) as e:
        raise RunError(f"recipe {name!r}: {e}") from None
    if mods:
        changes = {}
        for m in mods:
            key, eq, val = m.partition("=")
            if not eq or not key.strip():
                raise RunError(f"recipe {spec!r}: overrides look like name:field=value, got {m!r}")
            allowed = sorted({f.name for f in fields(recipe)} - {"name", "description"} | {"fmt", "granularity",
                                                                                           "grad_fp8"})
            if key.strip() not in allowed:
                raise RunError(f"recipe {spec!r}: unknown field {key.strip()!r}; fields: {', '.join(allowed)}")
            changes[key.strip()] = _parse_value(val)
        try:
            recipe = recipe.replace(**changes)
        except (TypeError, ValueError) as e:
            raise RunError(f"recipe {spec!r}: {str(e).splitlines()[0]}") from None
    return recipe


def check_recipes(names: Sequence[str], cfg: Optional["TrainConfig"] = None) -> None:
    """Unknown names, bad overrides, or FP4 recipes without fp4swift.torch: a RunError before any training."""
    recipes = [resolve_recipe(n) for n in names]
    for n in names:
        recipe_schedule(n, cfg or TrainConfig())  # the schedule keys' values and targets
    if any(r is not None for r in recipes):
        try:
            import fp4swift.torch  # noqa: F401
        except ImportError as e:
            raise RunError(f"recipes other than fp32 need the PyTorch integration fp4swift.torch ({e})") from None


def prepare_model(base: nn.Module, recipe: str) -> nn.Module:
    """A deep copy of the base model under the recipe spec; 'fp32' is the unconverted model."""
    model = copy.deepcopy(base)
    r = resolve_recipe(recipe)
    if r is not None:
        import fp4swift.torch as f4t

        f4t.convert(model, recipe=r)
    return model


def converted_linear_names(model: nn.Module, recipe: str = "wang2025") -> List[str]:
    """Qualified names of the nn.Linear modules convert() swaps under `recipe` (on a copy)."""
    try:
        import fp4swift.torch as f4t
    except ImportError:
        # the documented default policy: every nn.Linear except the LM head
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]
    probe = f4t.convert(copy.deepcopy(model), recipe=recipe)
    return [n for n, m in probe.named_modules() if isinstance(m, f4t.FP4Linear)]


# ---------------------------------------------------------------------------------------
# threads


def default_threads() -> int:
    """1. On this project's 2-core machine, torch's OpenMP pool on 2 threads ran a training step
    17x slower as soon as one other process competed for a core (its barrier waits for the
    descheduled worker), while one thread degrades gracefully. One thread per recipe also makes
    tokens/s a per-core comparison. Use --threads N on an otherwise idle machine."""
    return 1


def _openblas_set_threads(n: int) -> bool:
    """openblas_set_num_threads on the OpenBLAS the Swift core links (already loaded). False if absent."""
    import ctypes

    for name in ("libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"):
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_set_num_threads(ctypes.c_int(int(n)))
            return True
        except (OSError, AttributeError):
            continue
    return False


def configure_threads(n: int, fp4: bool) -> str:
    """Gives a recipe the thread budget n for its GEMMs without two pools fighting over the cores:
    fp32 runs torch on n threads; FP4 recipes run the Swift core and its OpenBLAS on n threads
    and torch (attention, norms, the LM head) on one. On a 2-core machine torch's OpenMP workers
    and OpenBLAS's both spin-wait between calls, and running both parallel made FP4 steps ~1.5x
    slower than either alone. Returns a description for the log."""
    if not fp4:
        torch.set_num_threads(n)
        return f"torch {n}"
    import fp4swift as f4

    torch.set_num_threads(1)
    f4.set_num_threads(n)
    _openblas_set_threads(n)
    return f"Swift core + OpenBLAS {n}, torch 1"


# ---------------------------------------------------------------------------------------
# optimization


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
    was = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        total += float(model.loss(torch.from_numpy(x), torch.from_numpy(y)))
    model.train(was)
    return total / len(batches)


# ---------------------------------------------------------------------------------------
# files


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


def default_out_dir(root: str = "runs") -> str:
    """runs/<YYYYmmdd-HHMMSS>, with -2, -3, ... appended if that directory exists."""
    base = os.path.join(root, _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out, i = base, 1
    while os.path.exists(out):
        i += 1
        out = f"{base}-{i}"
    return out


def _point_latest(out: str) -> None:
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


# ---------------------------------------------------------------------------------------
# the run


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, exit. Second: abort at once."""

    def __init__(self, stop_after: Optional[int], say: Callable[[str], None]) -> None:
        self.requested = False
        self.stop_after = stop_after
        self.steps_this_session = 0
        self.say = say
        self._old: Any = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
            self._old = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say("Ctrl-C: stopping after the current step and writing a checkpoint (Ctrl-C again to abort)")

    def step_done(self) -> bool:
        self.steps_this_session += 1
        if self.stop_after is not None and self.steps_this_session >= self.stop_after:
            self.requested = True
        return self.requested


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


#: The recipes train in turns of this many steps (round-robin), so that a change of load on a
#: shared machine hits every recipe alike and their tokens/s stay comparable (one recipe after
#: the other, the ratio measured mostly the machine's drift). A recipe's numbers do not depend
#: on the order: each has its own model and optimizer, and the data order is a function of the step.
INTERLEAVE_STEPS = 10


class Runner:
    """Trains every recipe of a TrainConfig into an output directory."""

    def __init__(self, cfg: TrainConfig, out: str, resume: bool = False, progress: bool = True,
                 stop_after: Optional[int] = None, log: Callable[[str], None] = print,
                 point_latest: bool = False, threads: Optional[int] = None) -> None:
        self.cfg, self.out, self.resume, self.progress = cfg, out, resume, progress
        self.threads = threads or default_threads()
        self.stop_after, self.log, self.point_latest = stop_after, log, point_latest
        self.corpus: Optional[Corpus] = None
        self.base: Optional[nn.Module] = None

    # -- setup: everything that can fail on bad input happens here, before any file is written
    def prepare(self) -> None:
        cfg = self.cfg
        cfg.validate()
        check_recipes(cfg.recipes, cfg)
        try:
            self.corpus = load_corpus(cfg.data)
            check_seq_len(self.corpus, cfg.seq_len)
        except DataError as e:
            raise RunError(str(e)) from None
        self.base = build_model(cfg.model_config(), cfg.seed)
        for r in cfg.recipes:  # convert now so a recipe convert() rejects fails before training
            prepare_model(self.base, r)
        if not self.resume and os.path.exists(os.path.join(self.out, "config.json")):
            raise RunError(f"{self.out} already holds a run; continue it with --resume or choose another --out")

    def resume_message(self) -> str:
        return f"fp4swift train --resume --out {self.out}"

    def run(self) -> List[RecipeResult]:
        if self.base is None:
            self.prepare()
        assert self.corpus is not None and self.base is not None
        with _StopFlag(self.stop_after, self._say) as stop:
            return self._run(stop)

    def _run(self, stop: "_StopFlag") -> List[RecipeResult]:
        assert self.corpus is not None and self.base is not None
        cfg = self.cfg
        os.makedirs(self.out, exist_ok=True)
        if not self.resume:
            atomic_write_text(os.path.join(self.out, "config.json"), json.dumps(cfg.to_dict(), indent=2) + "\n")
        if self.point_latest:
            _point_latest(self.out)
        n_params = count_parameters(self.base)
        self.write_run_json([])
        self.log(f"model: {cfg.model_config().label}, d_model {cfg.d_model}, {cfg.layers} layers, "
                 f"{cfg.heads} heads, MLP {cfg.model_config().hidden}, seq {cfg.seq_len}, vocab 256 (bytes), "
                 f"{'tied' if cfg.tie_embeddings else 'untied'} head: {n_params:,} parameters "
                 f"({count_parameters(self.base, exclude_embeddings=True):,} without the embedding)")
        self.log(f"data: {self.corpus.describe()}")
        self.log(f"training: {cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens "
                 f"= {cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens per recipe; AdamW lr {cfg.lr:g}, "
                 f"warmup {cfg.warmup_steps}, cosine to {cfg.min_lr_ratio:g}x; seed {cfg.seed}; "
                 f"threads {self.threads} (fp32: torch {self.threads}; FP4 recipes: Swift core + OpenBLAS "
                 f"{self.threads}, torch 1)")
        self.log(f"output: {self.out}")
        vals = val_batches(self.corpus.val, cfg.eval_batches, cfg.batch_size, cfg.seq_len)
        turns = {recipe: self._run_recipe(recipe, vals, stop, position=i) for i, recipe in enumerate(cfg.recipes)}
        done: Dict[str, RecipeResult] = {}
        try:
            while turns:
                for recipe in list(turns):
                    try:
                        next(turns[recipe])
                    except StopIteration as finished:
                        done[recipe] = finished.value
                        del turns[recipe]
                        self.write_run_json([done[r] for r in cfg.recipes if r in done])
        except Interrupted:
            # every recipe still in progress writes its checkpoint too (at its next turn's start)
            for recipe in list(turns):
                try:
                    next(turns.pop(recipe))
                except (Interrupted, StopIteration):
                    pass
            raise
        return [done[r] for r in cfg.recipes]

    def write_run_json(self, results: List["RecipeResult"]) -> None:
        """DIR/run.json (see the module docstring) from the recipes finished so far."""
        assert self.base is not None
        atomic_write_text(os.path.join(self.out, "run.json"),
                          json.dumps(run_metadata(self.cfg, self.base, results), indent=2) + "\n")

    def _say(self, msg: str) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except ImportError:
            print(msg, file=sys.stderr)

    def _checkpoint(self, path: str, recipe: str, model: nn.Module, opt: torch.optim.Optimizer, step: int,
                    rows: List[Dict[str, Any]], train_time: float, wall: float, done: bool,
                    diverged_at: Optional[int]) -> None:
        atomic_torch_save({
            "version": CHECKPOINT_VERSION,
            "recipe": recipe,
            "step": step,                 # completed updates; the next batch is train_batch(seed, step)
            "data_position": {"seed": self.cfg.seed, "next_step": step},
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": None,            # the sampler is a pure function of (seed, step): nothing to save
            "rows": rows,
            "train_time": train_time,
            "wall": wall,
            "done": done,
            "diverged_at": diverged_at,
            "config": self.cfg.to_dict(),
            "threads": self.threads,
        }, path)
        atomic_write_text(os.path.join(os.path.dirname(path), "metrics.csv"), metrics_csv(rows))

    def _run_recipe(self, recipe: str, vals: List[Tuple[np.ndarray, np.ndarray]], stop: _StopFlag,
                    position: int = 0) -> Iterator[None]:
        """Trains one recipe, yielding after every INTERLEAVE_STEPS steps so that the caller can
        give the other recipes their turns; returns (StopIteration.value) its RecipeResult."""
        assert self.corpus is not None and self.base is not None
        cfg = self.cfg
        rdir = os.path.join(self.out, recipe)
        os.makedirs(rdir, exist_ok=True)
        ckpt_path = os.path.join(rdir, "checkpoint.pt")
        model = prepare_model(self.base, recipe)
        configure_threads(self.threads, fp4=resolve_recipe(recipe) is not None)
        schedule, switch = None, None
        plan = recipe_schedule(recipe, cfg)
        if plan is not None:
            import fp4swift.torch as f4t

            schedule = f4t.PrecisionSchedule(model, total_steps=cfg.steps, switch_at=plan[0], target=plan[1])
            switch = (schedule.switch_step, plan[1])
        model.train()
        opt = make_optimizer(model, cfg)
        step, rows, train_time, wall, diverged_at, done = 0, [], 0.0, 0.0, None, False
        tokens_per_step = cfg.batch_size * cfg.seq_len
        if self.resume and os.path.exists(ckpt_path):
            ck = load_checkpoint(ckpt_path)
            if TrainConfig.from_dict(ck.get("config") or {}).to_dict() != cfg.to_dict():
                raise RunError(f"{ckpt_path} was written by a different configuration than {self.out}/config.json")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["torch_rng"])
            step, rows, train_time, wall = ck["step"], list(ck["rows"]), ck["train_time"], ck["wall"]
            diverged_at, done = ck["diverged_at"], ck["done"]
            if not done:
                self.log(f"[{recipe}] resuming at step {step} of {cfg.steps}")
                if ck.get("threads") not in (None, self.threads):
                    self.log(f"[{recipe}] note: the run used {ck['threads']} threads, this session {self.threads}; "
                             f"BLAS results can differ in the last bits with the thread count (--threads)")
        if done:
            self.log(f"[{recipe}] already finished ({step} steps); skipped")
            return RecipeResult(recipe, rows, train_time, step * tokens_per_step, diverged_at, switch)
        if stop.requested:
            self._checkpoint(ckpt_path, recipe, model, opt, step, rows, train_time, wall, False, None)
            raise Interrupted(f"stopped before {recipe} step {step + 1}")

        if step == 0:
            rows.append({"step": 0, "train_loss": None, "val_loss": evaluate(model, vals),
                         "tokens_per_s": None, "elapsed_s": 0.0})

        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc=f"{recipe:>12}", unit="step", file=sys.stderr,
                       dynamic_ncols=True, leave=True, position=position)
        last_val = next((r["val_loss"] for r in reversed(rows) if r.get("val_loss") is not None), None)
        try:
            while step < cfg.steps:
                if step % INTERLEAVE_STEPS == 0 and step > 0:
                    yield  # the other recipes' turns
                    if stop.requested:
                        self._checkpoint(ckpt_path, recipe, model, opt, step, rows, train_time, wall, False, None)
                        raise Interrupted(f"stopped before {recipe} step {step + 1}")
                    configure_threads(self.threads, fp4=resolve_recipe(recipe) is not None)
                t_wall = time.perf_counter()
                if schedule is not None and schedule.step(step):
                    self._say(f"[{recipe}] step {step}: switched every quantized layer to {plan[1]} "
                             f"(target-precision schedule, switch_at {plan[0]:g})")
                x, y = train_batch(self.corpus.train, cfg.seed, step, cfg.batch_size, cfg.seq_len)
                lr = lr_at(cfg, step)
                for g in opt.param_groups:
                    g["lr"] = lr
                t0 = time.perf_counter()
                loss_v: float
                try:
                    loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
                    loss_v = loss.detach().item()
                    if math.isfinite(loss_v):
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        opt.step()
                    opt.zero_grad(set_to_none=True)
                except Exception as e:  # the kernels refuse non-finite input: that is divergence too
                    import fp4swift as f4

                    if not isinstance(e, f4.FP4Error):
                        raise
                    opt.zero_grad(set_to_none=True)
                    loss_v = float("nan")
                dt = time.perf_counter() - t0
                step += 1
                train_time += dt
                row: Dict[str, Any] = {"step": step, "train_loss": loss_v, "val_loss": None,
                                       "tokens_per_s": tokens_per_step / dt if dt > 0 else None, "elapsed_s": 0.0,
                                       "switched": None if schedule is None else int(schedule.switched)}
                if not math.isfinite(loss_v):
                    diverged_at = step
                    self._say(f"[{recipe}] training loss is not finite at step {step}: diverged; stopping this recipe")
                if step % cfg.eval_every == 0 or step == cfg.steps or diverged_at is not None:
                    last_val = evaluate(model, vals) if diverged_at is None else float("nan")
                    row["val_loss"] = last_val
                wall += time.perf_counter() - t_wall
                row["elapsed_s"] = wall
                rows.append(row)
                if bar is not None:
                    post = {"loss": f"{loss_v:.3f}", "tok/s": f"{tokens_per_step / dt:,.0f}" if dt > 0 else "-"}
                    if last_val is not None:
                        post["val"] = f"{last_val:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                if diverged_at is not None:
                    break
                finished = step == cfg.steps
                stopping = stop.step_done() and not finished  # when finished, the next recipe stops at step 0
                if finished or stopping or step % cfg.checkpoint_every == 0:
                    self._checkpoint(ckpt_path, recipe, model, opt, step, rows, train_time, wall, finished, None)
                if stopping:
                    raise Interrupted(f"stopped after {recipe} step {step} of {cfg.steps}")
            if diverged_at is not None:
                self._checkpoint(ckpt_path, recipe, model, opt, step, rows, train_time, wall, True, diverged_at)
        finally:
            if bar is not None:
                bar.close()
        return RecipeResult(recipe, rows, train_time, step * tokens_per_step, diverged_at, switch)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint written by the runner (model, optimizer, RNG, step, metrics, config)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise RunError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise RunError(f"{path} is not an fp4swift training checkpoint (version {CHECKPOINT_VERSION})")
    return ck


# ---------------------------------------------------------------------------------------
# summary


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
                 "FP4 here is simulated (fake-quantized float32 GEMMs in the Swift core), so cost measures "
                 "the simulation overhead on this CPU, not FP4 hardware speed. A negative gap is a lower loss than fp32.")
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
                  wall: Optional[float] = None, n_non_embedding: Optional[int] = None) -> str:
    table, md = summarize(results)
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


# ---------------------------------------------------------------------------------------
# the command


#: Flags that define a run (stored in config.json; a resumed run must not change them).
CONFIG_FLAGS = ("recipes", "arch", "d_model", "layers", "heads", "seq_len", "mlp_hidden", "tie_embeddings",
                "batch_size", "steps", "lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip", "eval_every",
                "eval_batches", "checkpoint_every", "seed", "data", "tokens", "switch_at", "switch_to")


def _err(msg: str) -> int:
    print(f"fp4swift train: error: {msg}", file=sys.stderr)
    return 2


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


def _display_path(p: str) -> str:
    real = os.path.realpath(p)
    rel = os.path.relpath(real)
    return rel if not rel.startswith("..") else real


def train_command(args: Any) -> int:
    """`fp4swift train`: returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    t_start = time.perf_counter()
    if args.threads is not None and args.threads <= 0:
        return _err(f"--threads must be positive, got {args.threads}")
    if args.resume:
        out = _display_path(args.out or os.path.join("runs", "latest"))
        cfg_path = os.path.join(out, "config.json")
        if not os.path.isfile(cfg_path):
            return _err(f"nothing to resume: {cfg_path} does not exist")
        try:
            with open(cfg_path) as fh:
                stored = TrainConfig.from_dict(json.load(fh))
        except (OSError, ValueError, TypeError) as e:
            return _err(f"cannot read {cfg_path}: {e}")
        try:
            cfg = config_from_args(args, stored)
        except RunError as e:
            return _err(str(e))
        changed = [k for k in CONFIG_FLAGS if getattr(cfg, k) != getattr(stored, k)]
        if changed:
            return _err(f"--resume continues {out} as it was configured; these flags differ from its config.json: "
                        + ", ".join(f"--{k.replace('_', '-')}" for k in changed))
        point_latest = False
    else:
        try:
            cfg = config_from_args(args)
        except RunError as e:
            return _err(str(e))
        point_latest = args.out is None
        out = args.out or default_out_dir()
    runner = Runner(cfg, out, resume=bool(args.resume), progress=not args.no_progress,
                    stop_after=getattr(args, "stop_after", None), point_latest=point_latest,
                    threads=args.threads)
    try:
        runner.prepare()
        results = runner.run()
    except RunError as e:
        return _err(str(e))
    except Interrupted as e:
        print(f"fp4swift train: interrupted ({e}); checkpoint written. Resume with:\n  {runner.resume_message()}",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"fp4swift train: aborted; the last periodic checkpoints in {out} are intact. Resume with:\n  "
              f"{runner.resume_message()}", file=sys.stderr)
        return 130
    n_params = count_parameters(runner.base) if runner.base is not None else 0
    n_non_emb = count_parameters(runner.base, exclude_embeddings=True) if runner.base is not None else 0
    from .plots import plot_losses

    png = plot_losses(os.path.join(out, "loss_curves.png"), {r.recipe: r.rows for r in results},
                      title=f"{n_params:,}-parameter {cfg.model_config().label} model, {cfg.steps} steps, byte-level")
    wall = time.perf_counter() - t_start
    md = write_summary(out, results, cfg, n_params, wall if not args.resume else None, n_non_emb)
    print()
    print(md)
    print()
    print(f"wrote {out}/summary.md, summary.csv, "
          f"{'loss_curves.png, ' if png else '(no plot: matplotlib missing), '}"
          f"run.json, <recipe>/metrics.csv and checkpoint.pt; wall time {wall:.1f} s")
    return 0
