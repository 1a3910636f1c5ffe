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

The recipes take turns of INTERLEAVE_STEPS (10) steps, round-robin, in one process, so that a
change of load on a shared machine hits every recipe alike and their tokens/s compare fairly;
each recipe has its own model, optimizer and checkpoint, so its numbers do not depend on the
turns. The batch of step s is a pure function of (seed, s), the learning rate a pure function of s,
and nothing else draws random numbers, so a resumed run reproduces the uninterrupted one
bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .config import CONFIG_FLAGS, Interrupted, RunError, TrainConfig, config_from_args
from .data import Corpus, DataError, check_seq_len, load_corpus, val_batches
from .files import atomic_write_text
from .model import build_model, count_parameters
from .outputs import (CHECKPOINT_VERSION, RecipeResult, atomic_torch_save, default_out_dir, load_checkpoint,
                      metrics_csv, run_metadata, update_latest_link, write_summary)
from .recipes import check_recipes, prepare_model, recipe_schedule, resolve_recipe
from .step import evaluate, make_optimizer, train_step
from .threads import configure_threads, default_threads


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
            update_latest_link(self.out)
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

    def _checkpoint(self, run: "_RecipeRun", done: bool, diverged_at: Optional[int] = None) -> None:
        """The recipe's checkpoint.pt and metrics.csv as of its current step."""
        atomic_torch_save({
            "version": CHECKPOINT_VERSION,
            "recipe": run.recipe,
            "step": run.step,             # completed updates; the next batch is train_batch(seed, step)
            "data_position": {"seed": self.cfg.seed, "next_step": run.step},
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": None,            # the sampler is a pure function of (seed, step): nothing to save
            "rows": run.rows,
            "train_time": run.train_time,
            "wall": run.wall,
            "done": done,
            "diverged_at": diverged_at,
            "config": self.cfg.to_dict(),
            "threads": self.threads,
        }, run.ckpt_path)
        atomic_write_text(os.path.join(os.path.dirname(run.ckpt_path), "metrics.csv"), metrics_csv(run.rows))

    def _open_recipe(self, recipe: str) -> "_RecipeRun":
        """A recipe's model (converted copy of the base), optimizer and schedule, restored from its
        checkpoint when resuming."""
        assert self.base is not None
        cfg = self.cfg
        rdir = os.path.join(self.out, recipe)
        os.makedirs(rdir, exist_ok=True)
        model = prepare_model(self.base, recipe)
        fp4 = resolve_recipe(recipe) is not None
        configure_threads(self.threads, fp4=fp4)
        schedule, switch = None, None
        plan = recipe_schedule(recipe, cfg)
        if plan is not None:
            import fp4swift.torch as f4t

            schedule = f4t.PrecisionSchedule(model, total_steps=cfg.steps, switch_at=plan[0], target=plan[1])
            switch = (schedule.switch_step, plan[1])
        model.train()
        run = _RecipeRun(recipe, os.path.join(rdir, "checkpoint.pt"), model, make_optimizer(model, cfg), fp4,
                         plan, schedule, switch)
        if self.resume and os.path.exists(run.ckpt_path):
            ck = load_checkpoint(run.ckpt_path)
            if TrainConfig.from_dict(ck.get("config") or {}).to_dict() != cfg.to_dict():
                raise RunError(f"{run.ckpt_path} was written by a different configuration than {self.out}/config.json")
            model.load_state_dict(ck["model"])
            run.opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["torch_rng"])
            run.step, run.rows, run.train_time, run.wall = ck["step"], list(ck["rows"]), ck["train_time"], ck["wall"]
            run.diverged_at, run.done = ck["diverged_at"], ck["done"]
            if not run.done:
                self.log(f"[{recipe}] resuming at step {run.step} of {cfg.steps}")
                if ck.get("threads") not in (None, self.threads):
                    self.log(f"[{recipe}] note: the run used {ck['threads']} threads, this session {self.threads}; "
                             f"BLAS results can differ in the last bits with the thread count (--threads)")
        return run

    def _train_step(self, run: "_RecipeRun", vals: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, Any]:
        """One update of the recipe (with its schedule's switch and, when due, an evaluation):
        appends and returns its metrics row; sets run.diverged_at on a non-finite loss."""
        assert self.corpus is not None
        cfg = self.cfg
        t_wall = time.perf_counter()
        if run.schedule is not None and run.schedule.step(run.step):
            self._say(f"[{run.recipe}] step {run.step}: switched every quantized layer to {run.plan[1]} "
                      f"(target-precision schedule, switch_at {run.plan[0]:g})")
        loss_v, dt = train_step(run.model, run.opt, cfg, self.corpus.train, run.step)
        run.step += 1
        run.train_time += dt
        row: Dict[str, Any] = {"step": run.step, "train_loss": loss_v, "val_loss": None,
                               "tokens_per_s": cfg.tokens_per_step / dt if dt > 0 else None, "elapsed_s": 0.0,
                               "switched": None if run.schedule is None else int(run.schedule.switched)}
        if not math.isfinite(loss_v):
            run.diverged_at = run.step
            self._say(f"[{run.recipe}] training loss is not finite at step {run.step}: diverged; stopping this recipe")
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps or run.diverged_at is not None:
            row["val_loss"] = evaluate(run.model, vals) if run.diverged_at is None else float("nan")
        run.wall += time.perf_counter() - t_wall
        row["elapsed_s"] = run.wall
        run.rows.append(row)
        return row

    def _run_recipe(self, recipe: str, vals: List[Tuple[np.ndarray, np.ndarray]], stop: _StopFlag,
                    position: int = 0) -> Iterator[None]:
        """Trains one recipe, yielding after every INTERLEAVE_STEPS steps so that the caller can
        give the other recipes their turns; returns (StopIteration.value) its RecipeResult."""
        cfg = self.cfg
        run = self._open_recipe(recipe)
        if run.done:
            self.log(f"[{recipe}] already finished ({run.step} steps); skipped")
            return run.result(cfg.tokens_per_step)
        if stop.requested:
            self._checkpoint(run, False)
            raise Interrupted(f"stopped before {recipe} step {run.step + 1}")
        if run.step == 0:
            run.rows.append({"step": 0, "train_loss": None, "val_loss": evaluate(run.model, vals),
                             "tokens_per_s": None, "elapsed_s": 0.0})
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=run.step, desc=f"{recipe:>12}", unit="step", file=sys.stderr,
                       dynamic_ncols=True, leave=True, position=position)
        last_val = next((r["val_loss"] for r in reversed(run.rows) if r.get("val_loss") is not None), None)
        try:
            while run.step < cfg.steps:
                if run.step % INTERLEAVE_STEPS == 0 and run.step > 0:
                    yield  # the other recipes' turns
                    if stop.requested:
                        self._checkpoint(run, False)
                        raise Interrupted(f"stopped before {recipe} step {run.step + 1}")
                    configure_threads(self.threads, fp4=run.fp4)
                row = self._train_step(run, vals)
                if row["val_loss"] is not None:
                    last_val = row["val_loss"]
                if bar is not None:
                    loss_v, tps = row["train_loss"], row["tokens_per_s"]
                    post = {"loss": f"{loss_v:.3f}", "tok/s": f"{tps:,.0f}" if tps is not None else "-"}
                    if last_val is not None:
                        post["val"] = f"{last_val:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                if run.diverged_at is not None:
                    break
                finished = run.step == cfg.steps
                stopping = stop.step_done() and not finished  # when finished, the next recipe stops at step 0
                if finished or stopping or run.step % cfg.checkpoint_every == 0:
                    self._checkpoint(run, finished)
                if stopping:
                    raise Interrupted(f"stopped after {recipe} step {run.step} of {cfg.steps}")
            if run.diverged_at is not None:
                self._checkpoint(run, True, run.diverged_at)
        finally:
            if bar is not None:
                bar.close()
        return run.result(cfg.tokens_per_step)


@dataclass
class _RecipeRun:
    """One recipe's training in progress: its model, optimizer, schedule and the numbers its
    checkpoint holds."""

    recipe: str
    ckpt_path: str
    model: nn.Module
    opt: torch.optim.Optimizer
    fp4: bool                                 # the Swift core runs its GEMMs (not the fp32 baseline)
    plan: Optional[Tuple[float, str]] = None  # (switch_at, target) of a target-precision schedule
    schedule: Any = None                      # its fp4swift.torch.PrecisionSchedule
    switch: Optional[Tuple[int, str]] = None  # (step, target) of that schedule's switch
    step: int = 0
    rows: List[Dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0                   # seconds in training steps (evaluation excluded)
    wall: float = 0.0
    diverged_at: Optional[int] = None
    done: bool = False

    def result(self, tokens_per_step: int) -> RecipeResult:
        return RecipeResult(self.recipe, self.rows, self.train_time, self.step * tokens_per_step, self.diverged_at,
                            self.switch)


def _err(msg: str) -> int:
    print(f"fp4swift train: error: {msg}", file=sys.stderr)
    return 2


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
