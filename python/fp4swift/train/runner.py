"""`fp4swift train`: one small LLaMA-style (or, with --arch gpt2, GPT-2-style) model trained
under several precision recipes, side by side, from the same initialization and on the same
data order.

Output directory layout (DIR = --out, default runs/<YYYYmmdd-HHMMSS>, with runs/latest
pointing at the newest default run):

    DIR/config.json              the run's configuration (what --resume restores) and the corpus's
                                 sizes and SHA-256 (a resume with other data is refused)
    DIR/.lock                    held (flock) by the process training in DIR: a second train or
                                 --resume there is refused, naming it
    DIR/<trial>/metrics.csv      step, train_loss, val_loss, tokens_per_s, elapsed_s (rewritten at
                                 every evaluation and checkpoint)
    DIR/<trial>/checkpoint.pt    model, optimizer, RNG, step, metrics so far (atomic writes)

A trial is one recipe at one peak learning rate from one seed; <trial> is <recipe>, plus
/lr<rate> when --lr lists several rates and /seed<k> when --seeds > 1 (trials.py).
    DIR/loss_curves.png          training and validation loss of every recipe
    DIR/run.json                 what a scaling-law fit needs: arch, parameter counts (total and
                                 non-embedding), tokens per step, and per recipe the steps and
                                 tokens trained and the final validation loss (rewritten at the
                                 start of every session and after every recipe)
    DIR/summary.md               the comparison (compare.py): per recipe the final validation loss
                                 (mean ± std over seeds and each seed's), the gap to fp32 paired by
                                 seed with a 95% interval, the verdict, tokens/s, relative cost; with
                                 an --lr sweep, the sweep table and the comparison at each recipe's
                                 best rate and at fp32's
    DIR/summary.csv              one row per trial: final validation loss, gap to fp32 (same rate
                                 and seed), tokens/s, relative cost, parameters, tokens trained
    DIR/comparison.csv           one row per recipe and basis (best_lr, shared_lr): mean, std, min,
                                 max over seeds, gap and its interval, verdict

The length of a run is --steps or a token budget --tokens N (steps = ceil(N / (batch·seq_len));
config.json then holds both the budget and the derived steps).

The trials take turns of INTERLEAVE_STEPS (10) steps, round-robin, in one process, so that a
change of load on a shared machine hits every recipe alike and their tokens/s compare fairly;
each trial has its own model, optimizer and checkpoint, so its numbers do not depend on the
turns (a trial equals the one-seed, one-rate run with that --seed and --lr). The batch of step s
is a pure function of (seed, s), the learning rate a pure function of s, and nothing else draws
random numbers, so a resumed run reproduces the uninterrupted one bit for bit.
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

from . import distributed as dist
from .config import Interrupted, RunError, TrainConfig
from .data import Corpus, DataError, check_seq_len, load_corpus, val_batches
from .files import atomic_write_text
from .memory import check_memory
from .model import build_model, count_parameters
from .outputs import (CHECKPOINT_VERSION, RecipeResult, atomic_torch_save, load_checkpoint, metrics_csv,
                      run_metadata, update_latest_link)
from .recipes import check_layer_shapes, check_recipes, prepare_model, recipe_schedule, resolve_recipe
from .rundir import RunLock, check_writable, create_default_dir, create_dir, remove_stale_temporaries, writing
from .step import evaluate, make_optimizer, train_step
from .threads import configure_threads, default_threads, describe_threads
from .trials import Trial


class _StopFlag:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, checkpoint, exit. Second: abort
    at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop_after: Optional[int], say: Callable[[str], None]) -> None:
        self.requested = False
        self.signalled = False             # a signal arrived (under torchrun: step_done agrees on it)
        self.signum: Optional[int] = None  # the signal that asked to stop (None: --stop-after)
        self.stop_after = stop_after
        self.steps_this_session = 0
        self.say = say
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested or self.signalled:
            raise KeyboardInterrupt
        self.signalled = True
        self.signum = signum
        if not dist.current().distributed:  # several ranks stop together, at the step step_done agrees on
            self.requested = True
            self._said()

    def _said(self) -> None:
        name = "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum or signal.SIGTERM).name
        self.say(f"{name}: stopping after the current step and writing a checkpoint ({name} again to abort)")

    def step_done(self) -> bool:
        self.steps_this_session += 1
        if self.stop_after is not None and self.steps_this_session >= self.stop_after:
            self.requested = True
        if dist.current().distributed and not self.requested:
            self.requested = dist.any_rank(self.signalled)
            if self.requested and self.signalled:
                self._said()
        return self.requested


#: The recipes train in turns of this many steps (round-robin), so that a change of load on a
#: shared machine hits every recipe alike and their tokens/s stay comparable (one recipe after
#: the other, the ratio measured mostly the machine's drift). A recipe's numbers do not depend
#: on the order: each has its own model and optimizer, and the data order is a function of the step.
INTERLEAVE_STEPS = 10


class Runner:
    """Trains every recipe of a TrainConfig into an output directory."""

    def __init__(self, cfg: TrainConfig, out: Optional[str], resume: bool = False, progress: bool = True,
                 stop_after: Optional[int] = None, log: Callable[[str], None] = print,
                 point_latest: bool = False, threads: Optional[int] = None, runs_root: str = "runs",
                 stored_corpus: Optional[Dict[str, Any]] = None) -> None:
        """out None: a new directory under runs_root (runs/<YYYYmmdd-HHMMSS>), created when the
        run starts. stored_corpus: the corpus fingerprint of the config.json being resumed."""
        self.cfg, self.out, self.resume, self.progress = cfg, out, resume, progress
        self.runs_root = runs_root
        self.threads = threads or default_threads()
        self.stop_after, self.log, self.point_latest = stop_after, log, point_latest
        self.stored_corpus = stored_corpus
        self.corpus: Optional[Corpus] = None
        self.base: Optional[nn.Module] = None   # the first seed's initialized model
        self.bases: Dict[int, nn.Module] = {}
        self.lock: Optional[RunLock] = None
        self.stop: Optional[_StopFlag] = None
        #: trial label -> step of its last checkpoint on disk (what a failed write leaves intact)
        self.checkpointed: Dict[str, int] = {}

    # -- setup: everything that can fail on bad input happens here, before any file is written
    def prepare(self) -> None:
        cfg = self.cfg
        cfg.validate()
        check_recipes(cfg.recipes, cfg)
        check_memory(cfg, dist.current().local_size)
        if self.out is not None and dist.is_writer():
            lock = RunLock(self.out)
            holder = lock.holder()
            if holder is not None:
                raise lock.in_use(holder)
        if dist.is_writer():  # rank 0 alone writes the run directory (train/distributed.py)
            check_writable(self.out or self.runs_root, self.trial_dirs() if self.out else ())
        if self.resume and dist.is_writer():
            self._check_checkpoints()
        try:
            self.corpus = load_corpus(cfg.data)
            check_seq_len(self.corpus, cfg.seq_len)
        except DataError as e:
            raise RunError(str(e)) from None
        self._check_corpus()
        self.base = self.base_model(cfg.seed)
        for r in cfg.recipes:  # convert and run each layer shape now, so a recipe fails before training
            check_layer_shapes(prepare_model(self.base, r), r, cfg)
        if self.out is not None and not self.resume and dist.is_writer() and \
                os.path.exists(os.path.join(self.out, "config.json")):
            raise RunError(f"{self.out} already holds a run; continue it with --resume or choose another --out")

    def trial_dirs(self) -> List[str]:
        """Every trial's folder, relative to the run directory."""
        return [self.cfg.trial_dir(t) for t in self.cfg.trials()]

    def base_model(self, seed: int) -> nn.Module:
        """The initialized model of a seed (built once; every recipe of that seed copies it)."""
        if seed not in self.bases:
            self.bases[seed] = build_model(self.cfg.model_config(), seed)
        return self.bases[seed]

    def _check_checkpoints(self) -> None:
        """On --resume: each trial's checkpoint belongs to that trial and this configuration
        (read with mmap, so the tensors are not loaded here)."""
        assert self.out is not None
        for t in self.cfg.trials():
            path = os.path.join(self.out, self.cfg.trial_dir(t), "checkpoint.pt")
            if os.path.exists(path):
                self._check_checkpoint(path, t, load_checkpoint(path, mmap=True))

    def _check_checkpoint(self, path: str, t: Trial, ck: Dict[str, Any]) -> None:
        recipe = t.recipe
        if ck.get("recipe") != recipe:
            raise RunError(f"{path} is a checkpoint of recipe {ck.get('recipe')!r}, not {recipe!r}; "
                           f"put it back in its recipe's folder")
        # Checkpoints written before runs had several trials name neither: they are the run's only one.
        held = ck.get("trial") or {"lr": self.cfg.learning_rates[0], "seed": self.cfg.seed}
        if (float(held.get("lr", math.nan)), held.get("seed")) != (t.lr, t.seed):
            raise RunError(f"{path} is a checkpoint of {recipe} at lr {held.get('lr')} from seed {held.get('seed')}, "
                           f"not lr {t.lr:g} from seed {t.seed}; put it back in its trial's folder")
        if TrainConfig.from_dict(ck.get("config") or {}).to_dict() != self.cfg.to_dict():
            raise RunError(f"{path} was written by a different configuration than {self.out}/config.json")

    def _check_corpus(self) -> None:
        """On --resume: the data must be what config.json recorded (it fixes the validation split
        and every batch)."""
        assert self.corpus is not None
        old = self.stored_corpus
        if not self.resume or not old:
            return
        new = self.corpus.fingerprint()
        if any(old.get(k) != new[k] for k in ("train_bytes", "val_bytes", "sha256")):
            where = self.cfg.data or "the Python standard library's .py files (of this interpreter)"
            raise RunError(f"the data changed since this run started: {self.out}/config.json records "
                           f"{old.get('train_bytes', 0):,} + {old.get('val_bytes', 0):,} bytes (sha256 "
                           f"{str(old.get('sha256'))[:12]}), {where} now gives {new['train_bytes']:,} + "
                           f"{new['val_bytes']:,} bytes (sha256 {new['sha256'][:12]}); resume with the data it "
                           f"started with")

    def open_dir(self) -> None:
        """Creates the run directory (atomically: two runs never share one), takes its lock,
        removes temporary files an interrupted write left, and creates the recipes' folders."""
        if not dist.is_writer():  # the other ranks learn rank 0's directory in run()
            return
        if self.out is None:
            self.out = create_default_dir(self.runs_root)
        else:
            create_dir(self.out)
        self.lock = RunLock(self.out).acquire()
        if not self.resume and os.path.exists(os.path.join(self.out, "config.json")):
            raise RunError(f"{self.out} already holds a run; continue it with --resume or choose another --out")
        gone = remove_stale_temporaries(self.out, sorted(set(self.cfg.recipes) | set(self.trial_dirs())))
        if gone:
            self._say(f"removed {len(gone)} temporary file(s) an interrupted write left in {self.out}")
        for d in self.trial_dirs():
            create_dir(os.path.join(self.out, d))

    def close(self) -> None:
        """Releases the run directory's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def resume_message(self) -> str:
        return f"fp4swift train --resume --out {self.out}"

    def run(self) -> List[RecipeResult]:
        if self.base is None:
            self.prepare()
        assert self.corpus is not None and self.base is not None
        if self.lock is None:
            self.open_dir()
        self.out = dist.from_writer(lambda: self.out)
        with _StopFlag(self.stop_after, self._say) as stop:
            self.stop = stop
            return self._run(stop)

    def _run(self, stop: "_StopFlag") -> List[RecipeResult]:
        assert self.corpus is not None and self.base is not None and self.out is not None
        cfg = self.cfg
        if not self.resume and dist.is_writer():
            path = os.path.join(self.out, "config.json")
            with writing(path):
                atomic_write_text(path, json.dumps(dict(cfg.to_dict(), corpus=self.corpus.fingerprint()),
                                                   indent=2) + "\n")
        if self.point_latest and dist.is_writer():
            update_latest_link(self.out)
        n_params = count_parameters(self.base)
        self.write_run_json([])
        self.log(f"model: {cfg.model_config().label}, d_model {cfg.d_model}, {cfg.layers} layers, "
                 f"{cfg.heads} heads, MLP {cfg.model_config().hidden}, seq {cfg.seq_len}, vocab 256 (bytes), "
                 f"{'tied' if cfg.tie_embeddings else 'untied'} head: {n_params:,} parameters "
                 f"({count_parameters(self.base, exclude_embeddings=True):,} without the embedding)")
        self.log(f"data: {self.corpus.describe()}")
        note = self.corpus.skipped_note()
        if note and dist.is_writer():
            print(f"fp4swift train: warning: {note}", file=sys.stderr)
        rates, seeds = cfg.learning_rates, cfg.seed_list
        self.log(f"training: {cfg.steps} steps x {cfg.batch_size} x {cfg.seq_len} tokens "
                 f"= {cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens per trial; AdamW lr "
                 f"{','.join(f'{v:g}' for v in rates)}, warmup {cfg.warmup_steps}, cosine to {cfg.min_lr_ratio:g}x; "
                 f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
                 f"; init {cfg.init}; "
                 f"{len(cfg.trials())} trial(s) (recipe x rate x seed); "
                 f"threads {self.threads} (fp32: {describe_threads(self.threads, False)}; FP4 recipes: "
                 f"{describe_threads(self.threads, True)})")
        if dist.current().distributed:
            self.log(dist.describe(cfg, self.threads))
            for line in dist.summary_notes(cfg)[1:]:
                self.log(f"note: {line}")
        self.log(f"output: {self.out}")
        vals = val_batches(self.corpus.val, cfg.eval_batches, cfg.batch_size, cfg.seq_len)
        trials = cfg.trials()
        turns = {t: self._run_recipe(t, vals, stop, position=i) for i, t in enumerate(trials)}
        done: Dict[Trial, RecipeResult] = {}
        try:
            while turns:
                for t in list(turns):
                    try:
                        next(turns[t])
                    except StopIteration as finished:
                        done[t] = finished.value
                        del turns[t]
                        self.write_run_json([done[x] for x in trials if x in done])
        except Interrupted:
            # every trial still in progress writes its checkpoint too (at its next turn's start)
            for t in list(turns):
                try:
                    next(turns.pop(t))
                except (Interrupted, StopIteration):
                    pass
            raise
        return [done[t] for t in trials]

    def write_run_json(self, results: List["RecipeResult"]) -> None:
        """DIR/run.json (see the module docstring) from the recipes finished so far."""
        assert self.base is not None and self.out is not None
        if not dist.is_writer():
            return
        path = os.path.join(self.out, "run.json")
        with writing(path):
            atomic_write_text(path, json.dumps(run_metadata(self.cfg, self.base, results), indent=2) + "\n")

    def _say(self, msg: str) -> None:
        if not dist.is_writer():
            return
        try:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except ImportError:
            print(msg, file=sys.stderr)

    def _checkpoint(self, run: "_RecipeRun", done: bool, diverged_at: Optional[int] = None) -> None:
        """The recipe's checkpoint.pt and metrics.csv as of its current step."""
        dist.check_in_sync(run.model, f"{run.label} at step {run.step}")
        with writing(run.ckpt_path):
            self._save_checkpoint(run, done, diverged_at)
        self.checkpointed[run.label] = run.step
        self._write_metrics(run)

    def _write_metrics(self, run: "_RecipeRun") -> None:
        if not dist.is_writer():
            return
        path = os.path.join(os.path.dirname(run.ckpt_path), "metrics.csv")
        with writing(path):
            atomic_write_text(path, metrics_csv(run.rows))

    def _save_checkpoint(self, run: "_RecipeRun", done: bool, diverged_at: Optional[int]) -> None:
        if not dist.is_writer():
            return
        atomic_torch_save({
            "version": CHECKPOINT_VERSION,
            "recipe": run.recipe,
            "trial": {"lr": run.cfg.lr, "seed": run.cfg.seed},
            "step": run.step,             # completed updates; the next batch is train_batch(seed, step)
            "data_position": {"seed": run.cfg.seed, "next_step": run.step},
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
            "world_size": dist.current().size,  # processes of the session (the state is the same for any)
        }, run.ckpt_path)

    def _open_recipe(self, t: Trial) -> "_RecipeRun":
        """A trial's model (converted copy of its seed's base), optimizer and schedule, restored
        from its checkpoint when resuming."""
        assert self.base is not None and self.out is not None
        cfg = self.cfg.for_trial(t)
        recipe, label = t.recipe, self.cfg.trial_label(t)
        rdir = os.path.join(self.out, self.cfg.trial_dir(t))
        if dist.is_writer():
            create_dir(rdir)
        model = prepare_model(self.base_model(t.seed), recipe)
        fp4 = resolve_recipe(recipe) is not None
        configure_threads(self.threads, fp4=fp4)
        schedule, switch = None, None
        plan = recipe_schedule(recipe, cfg)
        if plan is not None:
            import fp4swift.torch as f4t

            schedule = f4t.PrecisionSchedule(model, total_steps=cfg.steps, switch_at=plan[0], target=plan[1])
            switch = (schedule.switch_step, plan[1])
        model.train()
        run = _RecipeRun(recipe, label, cfg, os.path.join(rdir, "checkpoint.pt"), model, make_optimizer(model, cfg),
                         fp4, plan, schedule, switch)
        ck = dist.from_writer(lambda: load_checkpoint(run.ckpt_path) if self.resume and os.path.exists(run.ckpt_path)
                              else None)  # rank 0 reads it, every rank loads it
        if ck is not None:
            self._check_checkpoint(run.ckpt_path, t, ck)
            model.load_state_dict(ck["model"])
            run.opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["torch_rng"])
            run.step, run.rows, run.train_time, run.wall = ck["step"], list(ck["rows"]), ck["train_time"], ck["wall"]
            run.diverged_at, run.done = ck["diverged_at"], ck["done"]
            self.checkpointed[label] = run.step
            if not run.done:
                self.log(f"[{label}] resuming at step {run.step} of {cfg.steps}")
                if ck.get("threads") not in (None, self.threads):
                    self.log(f"[{label}] note: the run used {ck['threads']} threads, this session {self.threads}; "
                             f"BLAS results can differ in the last bits with the thread count (--threads)")
                if ck.get("world_size", 1) != dist.current().size:
                    self.log(f"[{label}] note: the run used {ck.get('world_size', 1)} process(es), this session "
                             f"{dist.current().size}; sums differ in the last bits, and recipes with whole-batch "
                             f"statistics see other shards (train/distributed.py)")
        run.ddp = dist.wrap(model)
        return run

    def _train_step(self, run: "_RecipeRun", vals: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, Any]:
        """One update of the recipe (with its schedule's switch and, when due, an evaluation):
        appends and returns its metrics row; sets run.diverged_at on a non-finite loss."""
        assert self.corpus is not None
        cfg = run.cfg
        t_wall = time.perf_counter()
        if run.schedule is not None and run.schedule.step(run.step):
            self._say(f"[{run.label}] step {run.step}: switched every quantized layer to {run.plan[1]} "
                      f"(target-precision schedule, switch_at {run.plan[0]:g})")
        loss_v, dt = train_step(run.model, run.opt, cfg, self.corpus.train, run.step, ddp=run.ddp)
        run.step += 1
        run.train_time += dt
        row: Dict[str, Any] = {"step": run.step, "train_loss": loss_v, "val_loss": None,
                               "tokens_per_s": cfg.tokens_per_step / dt if dt > 0 else None, "elapsed_s": 0.0,
                               "switched": None if run.schedule is None else int(run.schedule.switched)}
        if not math.isfinite(loss_v):
            run.diverged_at = run.step
            self._say(f"[{run.label}] training loss is not finite at step {run.step}: diverged; stopping this recipe")
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps or run.diverged_at is not None:
            row["val_loss"] = evaluate(run.model, vals) if run.diverged_at is None else float("nan")
        run.wall += time.perf_counter() - t_wall
        row["elapsed_s"] = run.wall
        run.rows.append(row)
        if row["val_loss"] is not None:
            self._write_metrics(run)
        return row

    def _run_recipe(self, t: Trial, vals: List[Tuple[np.ndarray, np.ndarray]], stop: _StopFlag,
                    position: int = 0) -> Iterator[None]:
        """Trains one trial, yielding after every INTERLEAVE_STEPS steps so that the caller can
        give the other trials their turns; returns (StopIteration.value) its RecipeResult."""
        cfg = self.cfg
        run = self._open_recipe(t)
        recipe = run.label  # what logs and messages name
        if run.done:
            self.log(f"[{recipe}] already finished ({run.step} steps); skipped")
            return run.result()
        if stop.requested:
            self._checkpoint(run, False)
            raise Interrupted(f"stopped before {recipe} step {run.step + 1}")
        if run.step == 0:
            run.rows.append({"step": 0, "train_loss": None, "val_loss": evaluate(run.model, vals),
                             "tokens_per_s": None, "elapsed_s": 0.0})
        bar = None
        plain = self.progress and not _is_terminal(sys.stderr)  # a log file: lines, no bars
        if self.progress and not plain:
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
                    if plain:
                        tps = row["tokens_per_s"]
                        self._say(f"[{recipe}] step {run.step}/{cfg.steps}: loss {row['train_loss']:.4f}, "
                                  f"val {last_val:.4f}, " + (f"{tps:,.0f} tokens/s" if tps else "- tokens/s"))
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
        return run.result()


@dataclass
class _RecipeRun:
    """One recipe's training in progress: its model, optimizer, schedule and the numbers its
    checkpoint holds."""

    recipe: str
    label: str                                # the recipe, plus its rate and seed when the run varies them
    cfg: TrainConfig                          # this trial's configuration (one rate, one seed)
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
    ddp: Any = None                           # its DistributedDataParallel wrapper under torchrun

    def result(self) -> RecipeResult:
        return RecipeResult(self.recipe, self.rows, self.train_time, self.step * self.cfg.tokens_per_step,
                            self.diverged_at, self.switch, lr=float(self.cfg.lr), seed=self.cfg.seed)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
