"""`fp4swift train` as a command: flags and --resume to a configuration, the run, and what
it prints and exits with (the Runner itself is in runner.py)."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Optional

from . import distributed as dist
from .config import CONFIG_FLAGS, Interrupted, RunError, TrainConfig, config_from_args
from .model import count_parameters
from .outputs import comparison, write_summary
from .rundir import WriteError, writing
from .runner import Runner


def _err(msg: str) -> int:
    dist.report(msg)  # under torchrun every rank fails alike (train/distributed.py): rank 0 says it
    return 2


def _display_path(p: str) -> str:
    real = os.path.realpath(p)
    rel = os.path.relpath(real)
    return rel if not rel.startswith("..") else real


def _write_failed(e: WriteError, runner: "Runner") -> int:
    """One line: what could not be written, which checkpoints are intact, how to resume."""
    msg = str(e)
    if runner.lock is not None:  # the run had started: say what is on disk
        if runner.checkpointed:
            msg += ("; the last checkpoints are intact (" + ", ".join(f"{r}: step {s}" for r, s in
                                                                     runner.checkpointed.items())
                    + f"); free space or fix the permissions, then resume with: {runner.resume_message()}")
        elif os.path.exists(os.path.join(runner.out or "", "config.json")):
            msg += f"; no checkpoint was written yet; fix the cause, then resume with: {runner.resume_message()}"
    return _err(msg)


def train_command(args: Any) -> int:
    """`fp4swift train`: returns the exit status (0 ok, 1 every recipe diverged, 2 bad input or a
    write error, 130 interrupted by Ctrl-C, 143 by SIGTERM)."""
    t_start = time.perf_counter()
    if args.threads is not None and args.threads <= 0:
        return _err(f"--threads must be positive, got {args.threads}")
    stored_corpus = None
    if args.resume:
        out = _display_path(args.out or os.path.join("runs", "latest"))
        cfg_path = os.path.join(out, "config.json")
        if not dist.from_writer(os.path.isfile, cfg_path):
            return _err(f"nothing to resume: {cfg_path} does not exist")
        try:
            raw = json.loads(dist.from_writer(dist.read_text, cfg_path))  # rank 0 reads it for every rank
            stored = TrainConfig.from_dict(raw)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            return _err(f"cannot read {cfg_path}: {e}")
        stored_corpus = raw.get("corpus") if isinstance(raw.get("corpus"), dict) else None
        try:
            cfg = config_from_args(args, stored)
        except RunError as e:
            return _err(str(e))
        changed = [k for k in CONFIG_FLAGS if getattr(cfg, k) != getattr(stored, k)]
        if changed:
            return _err(f"--resume continues {out} as it was configured; these flags differ from its config.json: "
                        + ", ".join(f"--{k.replace('_', '-')}" for k in changed))
        point_latest = False
        out_dir: Optional[str] = out
    else:
        try:
            cfg = config_from_args(args)
        except RunError as e:
            return _err(str(e))
        point_latest = args.out is None
        out_dir = args.out
    try:
        dist.check_batch(cfg)
    except RunError as e:
        return _err(str(e))
    threads, note = dist.rank_threads(args.threads)
    if note and dist.is_writer():
        print(f"fp4swift train: note: {note}", file=sys.stderr)
    runner = Runner(cfg, out_dir, resume=bool(args.resume), progress=not args.no_progress and dist.is_writer(),
                    stop_after=getattr(args, "stop_after", None), point_latest=point_latest,
                    threads=threads, stored_corpus=stored_corpus, log=print if dist.is_writer() else (lambda s: None))
    try:
        return _train(runner, cfg, args, t_start)
    except WriteError as e:
        return _write_failed(e, runner)
    except RunError as e:
        return _err(str(e))
    except RuntimeError as e:
        if not dist.is_comm_failure(e):
            raise
        _err(dist.lost_contact(e, runner.out, runner.checkpointed, runner.resume_message()))
        return dist.LOST_CONTACT_STATUS
    finally:
        runner.close()


def _train(runner: "Runner", cfg: TrainConfig, args: Any, t_start: float) -> int:
    try:
        dist.agree(runner.prepare)  # under torchrun: a rank that cannot start stops every rank
        dist.check_same("data", runner.corpus.fingerprint() if runner.corpus is not None else None)
        results = runner.run()
    except Interrupted as e:
        sig = runner.stop.signum if runner.stop is not None else None
        if dist.is_writer():
            print(f"fp4swift train: interrupted ({e}); checkpoint written. Resume with:\n  {runner.resume_message()}",
                  file=sys.stderr)
        return 128 + (sig or signal.SIGINT)
    except KeyboardInterrupt:
        if dist.is_writer():
            print(f"fp4swift train: aborted; the last periodic checkpoints in {runner.out} are intact. Resume with:\n  "
                  f"{runner.resume_message()}", file=sys.stderr)
        return 130
    out = runner.out
    assert out is not None
    if not dist.is_writer():  # rank 0 writes the plot and the summary
        return 1 if results and all(r.diverged_at is not None for r in results) else 0
    n_params = count_parameters(runner.base) if runner.base is not None else 0
    n_non_emb = count_parameters(runner.base, exclude_embeddings=True) if runner.base is not None else 0
    from .plots import plot_losses

    with writing(os.path.join(out, "loss_curves.png")):
        cmp = comparison(results, cfg)  # each recipe at its best learning rate, every seed
        curves, ref_label = {}, None
        for recipe in cfg.recipes:
            lr = cmp.best_lr(recipe) or cfg.learning_rates[0]
            label = recipe + (f" (lr {lr:g})" if len(cfg.learning_rates) > 1 else "")
            curves[label] = [r.rows for r in results if r.recipe == recipe and r.lr == lr]
            ref_label = label if recipe == "fp32" else ref_label
        seeds = f", {cfg.seeds} seeds" if cfg.seeds > 1 else ""
        png = plot_losses(os.path.join(out, "loss_curves.png"), curves, reference=ref_label,
                          title=f"{n_params:,}-parameter {cfg.model_config().label} model, {cfg.steps} steps{seeds}, "
                                f"byte-level")
    wall = time.perf_counter() - t_start
    with writing(os.path.join(out, "summary.md")):
        md = write_summary(out, results, cfg, n_params, wall if not args.resume else None, n_non_emb,
                           notes=dist.summary_notes(cfg))
    print()
    print(md)
    print()
    print(f"wrote {out}/summary.md, summary.csv, "
          f"{'loss_curves.png, ' if png else '(no plot: matplotlib missing), '}"
          f"comparison.csv, run.json, "
          f"{'<recipe>/' if len(cfg.trials()) == len(cfg.recipes) else '<recipe>/[lr<rate>/][seed<k>/]'}"
          f"metrics.csv and checkpoint.pt; wall time {wall:.1f} s")
    diverged = [r for r in results if r.diverged_at is not None]
    if results and len(diverged) == len(results):
        print("fp4swift train: error: every recipe diverged ("
              + ", ".join(f"{r.recipe} at step {r.diverged_at}" for r in diverged)
              + "); try a lower --lr or a longer --warmup", file=sys.stderr)
        return 1
    return 0
