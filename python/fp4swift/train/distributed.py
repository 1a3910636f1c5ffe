"""`fp4swift train` on several processes and machines: data parallelism with PyTorch's own
engine. torchrun (torch.distributed.run) starts the processes and tells each its rank;
DistributedDataParallel all-reduces the gradients over gloo. Nothing here launches processes or
moves bytes by itself.

    torchrun --nproc-per-node 2 -m fp4swift train ...          one machine, 2 processes
    fp4swift train --nproc 2 ...                               the same; torchrun's engine is started for you
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m fp4swift train ...                                  the same command on every machine

A step under P processes (ranks): every rank draws the same global batch train_batch(seed, step)
of --batch-size sequences and trains on its contiguous share of batch_size / P rows (P must divide
the batch size). A rank's loss is the sum of its tokens' cross entropies divided by the token
count of the *global* batch, and DDP sums the ranks' gradients (a comm hook that sums instead of
averaging), so the update is the global batch's mean-loss gradient and every rank's dY is the
1-process dY of its rows: the run equals the 1-process run with the same --batch-size up to
float32 summation order, for fp32 and for every recipe whose statistics are per row (per token).
Recipes with statistics over the whole batch (a per-tensor OCC threshold or scale, scales over the
tokens, blocks or rotations along the tokens, stochastic draws) compute them per rank over its
shard: `shard_dependence` names them, and the summary says so. The logged training loss is the
all-reduced global mean; validation batches are dealt round-robin to the ranks, each evaluated
whole, and the sum all-reduced (the same value as one process up to float64 summation order).
Initialization, data order and learning-rate schedule are functions of (seed, step), identical on
every rank. Stochastic rounding and Quartet's random signs draw per call from a process-wide
counter; rank r's starts at r·2^40, so rank 0 draws as one process does and the others draw
their own (`_decorrelate_draws`). Threads: each rank gets --threads, at most
cores // (ranks on its machine) (`rank_threads`; the default stays 1).

Rank 0 (`is_writer()`) alone writes the run directory (config.json, metrics, checkpoints, plot,
summary) and prints; a resumed run's config.json and checkpoints are read by rank 0 and sent to
the others (`from_writer`), so the other machines need the data but not the run directory.
Checkpoints hold the unwrapped model and no per-rank state: a run resumes with any number of
processes. At every checkpoint the ranks compare a CRC of their weights (`check_in_sync`).

Failures: setup errors on any rank (bad flags, missing data) reach every rank (`agree`) and rank 0
prints them as one line; the ranks' flags must be equal (`check_same_flags`). Every collective
waits at most --dist-timeout seconds (FP4SWIFT_DIST_TIMEOUT, default 120): a rank that dies makes
the others fail at once (gloo sees the connection close), one that hangs makes them fail after
the timeout; rank 0 then prints one line and the surviving ranks exit with status 3.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import signal
import socket
import sys
import traceback
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from .config import RunError, TrainConfig

#: Seconds a collective waits for the other ranks before failing (--dist-timeout overrides it).
TIMEOUT_ENV = "FP4SWIFT_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
#: Exit status of a rank whose peers failed, were killed or stopped answering.
LOST_CONTACT_STATUS = 3
#: Set by `launch` for its workers: a file rank 0 creates when it has printed an error line, so
#: that the launcher adds a line only when no process said why the run failed.
REPORTED_ENV = "FP4SWIFT_REPORTED_MARK"
#: Flags that may differ between ranks: where rank 0 writes, per-machine thread budgets, bars.
LOCAL_FLAGS = ("func", "out", "threads", "no_progress", "nproc", "dist_timeout")

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank of size, and rank / size on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0


_world = World()


def current() -> World:
    """The world of this process (rank 0 of 1 unless `init_from_env` joined a process group)."""
    return _world


def is_writer() -> bool:
    return _world.writer


def timeout_seconds(flag: Optional[float] = None) -> float:
    """--dist-timeout, else $FP4SWIFT_DIST_TIMEOUT, else DEFAULT_TIMEOUT; RunError if not > 0."""
    raw: Any = flag if flag is not None else os.environ.get(TIMEOUT_ENV, "").strip() or DEFAULT_TIMEOUT
    where = "--dist-timeout" if flag is not None else TIMEOUT_ENV
    try:
        t = float(raw)
    except ValueError:
        raise RunError(f"{where} must be a number of seconds, got {raw!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise RunError(f"{where} must be a positive number of seconds, got {raw!r}")
    return t


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    try:
        return int(v) if v else default
    except ValueError:
        raise RunError(f"${name} must be an integer, got {v!r} (set by torchrun)") from None


def init_from_env(timeout: Optional[float] = None) -> World:
    """Joins the gloo process group torchrun prepared (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) with `timeout_seconds(timeout)` per collective.
    Without torchrun (no WORLD_SIZE, or 1) this is one process: nothing is initialized."""
    global _world
    t = timeout_seconds(timeout)
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        _world = World(timeout=t)
        return _world
    rank = _env_int("RANK", 0)
    if not torch.distributed.is_available():
        raise RunError("this PyTorch build has no torch.distributed; run one process (without torchrun)")
    try:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=t))
    except Exception as e:  # noqa: BLE001 - any failure to join is one line for the user
        raise RunError(f"rank {rank} of {size} could not join the process group at "
                       f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}: "
                       f"{_first_line(e)}") from None
    _world = World(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", 0),
                   local_size=_env_int("LOCAL_WORLD_SIZE", 1), timeout=t)
    _decorrelate_draws(rank)
    return _world


def leave_and_exit(status: int, completed: bool) -> None:
    """Ends this rank's process with `status`. completed: this rank finished the run the way every
    rank does; then a barrier first, so no rank leaves while another still has work in flight
    (after a failure the others may be gone, so no barrier).

    The process exits at once (os._exit) instead of tearing gloo down: destroying the process
    group, or letting interpreter exit destroy it, sometimes hit a joinable std::thread in
    gloo's worker threads and aborted (SIGABRT, "terminate called without an active exception")
    after a successful run, or after a lost peer, instead of exiting with our status. Every file
    is written and closed by then; the OS closes the sockets."""
    if completed:
        try:
            torch.distributed.barrier()
        except Exception:  # noqa: BLE001 - the run's status is already decided
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not change the status
            pass
    os._exit(status)


def _decorrelate_draws(rank: int) -> None:
    """Stochastic rounding and Quartet's random signs draw from a per-call seed (a process-wide
    call counter, fp4swift.linear._CALLS); on identical ranks the counters would run in step and
    every rank would reuse rank 0's draws for its own rows. Rank r counts from r·2^40 instead:
    rank 0 keeps the 1-process draws, the others get their own."""
    import itertools

    from .. import linear

    linear._CALLS = itertools.count(rank << 40)


def report(msg: str) -> None:
    """Prints `fp4swift train: error: msg` on rank 0 (the other ranks fail alike and stay quiet)."""
    if not _world.writer:
        return
    print(f"fp4swift train: error: {msg}", file=sys.stderr)
    mark = os.environ.get(REPORTED_ENV)
    if mark:
        try:
            open(mark, "a").close()
        except OSError:
            pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def is_comm_failure(e: BaseException) -> bool:
    """Whether `e` is gloo reporting a lost or silent peer (connection closed or reset, timeout)."""
    if not _world.distributed:
        return False
    if isinstance(e, getattr(torch.distributed, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and "gloo" in str(e)


def lost_contact(e: BaseException, out: Optional[str], checkpointed: Dict[str, int], resume: str) -> str:
    """The one line rank 0 prints when another rank failed, was killed or stopped answering."""
    msg = (f"lost contact with another process of this {_world.size}-process run (gloo: "
           f"{_gloo_reason(e)}): it failed, was killed or did not answer within {_world.timeout:g} s "
           f"(--dist-timeout, ${TIMEOUT_ENV})")
    if checkpointed:
        msg += ("; the last checkpoints are intact (" + ", ".join(f"{r}: step {s}" for r, s in checkpointed.items())
                + f"); resume with: {resume}")
    elif out and os.path.exists(os.path.join(out, "config.json")):
        msg += f"; no checkpoint was written yet; resume with: {resume}"
    return msg


def _gloo_reason(e: BaseException) -> str:
    """'Connection closed by peer [127.0.0.1]:1234' from gloo's '[file.cc:N] Connection closed ...
    This is typically caused by ...' message."""
    line = _first_line(e)
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line.split(". This is typically")[0].rstrip(".")


# ---------------------------------------------------------------------------------------
# collectives the runner's control flow uses (all no-ops in one process)


def _gather(obj: Any) -> List[Any]:
    out: List[Any] = [None] * _world.size
    torch.distributed.all_gather_object(out, obj)
    return out


def all_sum(value: float) -> float:
    """The sum of `value` over the ranks (float64; NaN on any rank gives NaN)."""
    if not _world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any."""
    if not _world.distributed:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def agree(fn: Callable[[], T]) -> T:
    """Runs fn on every rank; if it raised RunError on any, raises that error on every rank (the
    lowest failing rank's, naming it), so that no rank goes on into a collective alone."""
    if not _world.distributed:
        return fn()
    err: Optional[str] = None
    result: Any = None
    try:
        result = fn()
    except RunError as e:
        err = str(e)
    for rank, (msg, host) in enumerate(_gather((err, socket.gethostname()))):
        if msg is not None:
            raise RunError(msg if rank == 0 else f"rank {rank} (on {host}): {msg}")
    return result


def from_writer(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) as rank 0 computes it, on every rank (rank 0 reads run files; the other ranks,
    perhaps on machines without the run directory, receive what it read). A RunError, OSError or
    ValueError raised on rank 0 is raised on every rank."""
    if not _world.distributed:
        return fn(*args)
    box: List[Any] = [None]
    if _world.writer:
        try:
            box[0] = ("ok", fn(*args))
        except RunError as e:
            box[0] = ("raise", RunError(str(e)))
        except (OSError, ValueError) as e:
            box[0] = ("raise", e)
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "raise":
        raise value
    return value


def read_text(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def check_same_flags(args: Any) -> None:
    """RunError on every rank, naming the flags, unless every rank was started with rank 0's
    training flags (LOCAL_FLAGS may differ)."""
    if not _world.distributed:
        return
    mine = {k: v for k, v in sorted(vars(args).items()) if k not in LOCAL_FLAGS and not k.startswith("_")}
    everyone = _gather((mine, socket.gethostname()))
    ref = everyone[0][0]
    for rank, (theirs, host) in enumerate(everyone[1:], 1):
        diff = [k for k in sorted(set(ref) | set(theirs)) if ref.get(k) != theirs.get(k)]
        if diff:
            shown = ", ".join(f"--{k.replace('_', '-')} {theirs.get(k)!r} (rank 0: {ref.get(k)!r})" for k in diff)
            raise RunError(f"the processes were started with different flags: rank {rank} (on {host}) has {shown}; "
                           f"start every process with the same training flags")


def check_same(what: str, value: Any) -> None:
    """RunError on every rank unless `value` (e.g. the corpus fingerprint) is rank 0's on every rank."""
    if not _world.distributed:
        return
    everyone = _gather((value, socket.gethostname()))
    for rank, (theirs, host) in enumerate(everyone[1:], 1):
        if theirs != everyone[0][0]:
            raise RunError(f"rank {rank} (on {host}) has other {what} than rank 0: {theirs} vs {everyone[0][0]}")


def _weights_crc(model: torch.nn.Module) -> int:
    crc = 0
    for t in list(model.parameters()) + list(model.buffers()):
        crc = zlib.crc32(np.ascontiguousarray(t.detach().cpu().numpy()).view(np.uint8).reshape(-1), crc)
    return crc


def check_in_sync(model: torch.nn.Module, what: str) -> None:
    """RunError on every rank unless every rank holds bit-identical weights (DDP keeps them so;
    checked at every checkpoint, because only rank 0's are written)."""
    if not _world.distributed:
        return
    crcs = _gather(_weights_crc(model))
    if len(set(crcs)) > 1:
        raise RunError(f"the processes' weights of {what} differ (CRC-32 per rank: "
                       + ", ".join(f"{c:08x}" for c in crcs) + "); this is a bug, please report it")


# ---------------------------------------------------------------------------------------
# the data-parallel step


def check_batch(cfg: TrainConfig) -> None:
    """RunError unless the global batch splits evenly over the ranks."""
    if _world.distributed and cfg.batch_size % _world.size:
        raise RunError(f"--batch-size {cfg.batch_size} (the global batch) does not split evenly over "
                       f"{_world.size} processes; use a multiple of {_world.size}")


def shard(x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """This rank's contiguous rows of a global batch (inputs, targets)."""
    if not _world.distributed:
        return x, y
    n = x.shape[0] // _world.size
    lo = _world.rank * n
    return x[lo:lo + n], y[lo:lo + n]


def _sum_hook(state: Any, bucket: Any) -> Any:
    """DDP comm hook: the sum of the ranks' gradients (DDP's default divides it by the world size;
    here each rank's loss is already divided by the global batch's token count)."""
    fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


# DDP checks a hook's annotations as objects (this module's are strings: `from __future__ import annotations`).
_sum_hook.__annotations__ = {"state": object, "bucket": torch.distributed.GradBucket,
                             "return": torch.futures.Future[torch.Tensor]}


def wrap(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """A DistributedDataParallel wrapper of `model` whose gradients are summed over the ranks, or
    None in one process. The model itself stays what the optimizer and checkpoints see. DDP
    checks that every rank's parameters have the same shapes and copies rank 0's values."""
    if not _world.distributed:
        return None
    import inspect

    ddp_cls = torch.nn.parallel.DistributedDataParallel
    # buffers (RoPE tables) are equal on every rank: no broadcast at each forward
    quiet = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp_cls.__init__).parameters
             else "broadcast_buffers")
    ddp = ddp_cls(model, **{quiet: False})
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def ddp_loss(ddp: torch.nn.Module, x: np.ndarray, y: np.ndarray, global_tokens: int) -> torch.Tensor:
    """The next-byte cross entropy of this rank's rows, summed and divided by the global batch's
    token count (the models' `loss`, through the DDP wrapper so that its hooks run)."""
    logits = ddp(torch.from_numpy(x))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1),
                                           reduction="sum")
    return ce / global_tokens


def my_batches(batches: Sequence[T]) -> Sequence[T]:
    """The validation batches this rank evaluates (round-robin; each batch whole)."""
    return batches[_world.rank::_world.size] if _world.distributed else batches


# ---------------------------------------------------------------------------------------
# threads, descriptions, notes


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def rank_threads(requested: Optional[int]) -> Tuple[Optional[int], Optional[str]]:
    """(threads per rank, a note for the log or None): --threads as given in one process; under
    torchrun at most cores // (ranks on this machine), so the ranks do not oversubscribe the
    cores (None keeps the runner's default of one thread)."""
    if not _world.distributed:
        return requested, None
    cores = available_cores()
    per = max(1, cores // max(1, _world.local_size))
    if _world.local_size > cores:
        return 1, (f"{_world.local_size} processes on this machine's {cores} cores: they share cores "
                   f"(one thread each)")
    if requested is not None and requested > per:
        return per, (f"--threads {requested} x {_world.local_size} processes would oversubscribe this machine's "
                     f"{cores} cores: {per} thread(s) per process")
    return requested, None


def describe(cfg: TrainConfig, threads: int) -> str:
    """The log line of a data-parallel run."""
    w = _world
    machines = max(1, w.size // max(1, w.local_size))
    return (f"data-parallel: {w.size} processes ({w.local_size} on this machine, {machines} machine(s)), "
            f"DistributedDataParallel over gloo (collective timeout {w.timeout:g} s); each step's "
            f"{cfg.batch_size} sequences split {cfg.batch_size // w.size} per process; {threads} thread(s) per process")


def _quantizer_reasons(name: str, q: Any) -> List[str]:
    out = []
    gran = q.granularity_label
    if gran == "tensor":
        out.append(f"the per-tensor scale of {name}")
    elif gran == "column":
        out.append(f"the per-column scales of {name} (over the tokens)")
    elif gran.startswith("block2d"):
        out.append(f"the 2-D tiles of {name} (they span tokens)")
    if q.scale_rule.startswith("nvfp4") and gran != "tensor":
        out.append(f"the per-tensor scale S of {name} (two-level NVFP4 scales)")
    if q.rounding == "stochastic":
        out.append(f"the stochastic rounding of {name} (each process draws its own)")
    return out


def shard_dependence(spec: str, cfg: Optional[TrainConfig] = None) -> List[str]:
    """What of a recipe spec's numbers is computed over a process's shard of the batch rather
    than per token, so that sharding changes it (empty: fp32 and per-row recipes, which give the
    1-process numbers up to float32 summation order). Weights are the same on every rank, so
    their quantizers never appear. With cfg, a target-precision schedule's target counts too."""
    from .recipes import recipe_schedule, resolve_recipe

    reasons = _recipe_reasons(resolve_recipe(spec))
    plan = recipe_schedule(spec, cfg or TrainConfig())
    if plan is not None:
        reasons += [f"after the switch to {plan[1]}, {why}" for why in shard_dependence(plan[1]) if why not in reasons]
    return reasons


def _recipe_reasons(r: Any) -> List[str]:
    from ..quantization import QuantizerSpec

    if r is None:
        return []
    reasons: List[str] = []
    todo = [r] + [x for x in (r.for_role(role) for role, _ in r.roles) if x is not None and x is not r]
    seen = set()
    for rr in todo:
        if rr.name in seen and rr is not r:
            continue
        seen.add(rr.name)
        if rr.kind == "quartet":
            reasons.append("Quartet's backward: dY and X rotated, grouped and stochastically rounded along the tokens")
            continue
        if rr.occ and rr.occ_per == "tensor":
            reasons.append(f"the per-tensor OCC threshold (the {rr.alpha:g}-quantile of |X|)")
        for name, q in (("X", rr.input), ("dY", rr.gradient),
                        ("X in the dW GEMM", rr.backward_input if isinstance(rr.backward_input, QuantizerSpec) else None)):
            if q is not None:
                reasons.extend(_quantizer_reasons(name, q))
        if rr.backward_grouping == "reduction" and (rr.gradient is not None or rr.saved_input is not None):
            reasons.append("the dW GEMM's blocks along the tokens")
        if rr.wgrad_hadamard:
            reasons.append(f"the dW GEMM's {rr.wgrad_hadamard}-point Hadamard transform along the tokens")
    return list(dict.fromkeys(reasons))


def summary_notes(cfg: TrainConfig) -> List[str]:
    """The summary's paragraph on a data-parallel run (nothing in one process)."""
    w = _world
    if not w.distributed:
        return []
    per = cfg.batch_size // w.size
    notes = [f"Data-parallel over {w.size} processes (torch DistributedDataParallel, gloo): each step's global "
             f"batch of {cfg.batch_size} sequences is split {per} per process; tokens/s counts the tokens of all "
             f"{w.size} processes."]
    same, changed = [], []
    for spec in cfg.recipes:
        why = shard_dependence(spec, cfg)
        if why:
            changed.append(f"**{spec}**: {', '.join(why)}")
        else:
            same.append(spec)
    if same:
        notes.append(f"{', '.join(same)}: no statistics over the batch (per-row ones at most), so the numbers of "
                     f"one process with the same global batch, up to float32 summation order.")
    if changed:
        notes.append(f"Sharding changes the numbers of these recipes: each process computes the following over its "
                     f"{per} sequences, not over the global batch of {cfg.batch_size}: " + "; ".join(changed) + ".")
    return notes


# ---------------------------------------------------------------------------------------
# one rank's command, and `fp4swift train --nproc P`


def run_rank(command: Callable[[Any], int], args: Any) -> int:
    """`fp4swift train` in this process: joins torchrun's process group if there is one, checks
    that every rank got the same flags, runs `command(args)` and leaves the group."""
    try:
        world = init_from_env(getattr(args, "dist_timeout", None))
    except RunError as e:
        report(str(e))
        return 2
    if not world.distributed:
        return command(args)
    status, crashed = 2, False
    try:
        check_same_flags(args)
        status = command(args)
    except RunError as e:
        report(str(e))
    except KeyboardInterrupt:  # Ctrl-C before training started (torchrun forwards it)
        report("interrupted before training started")
        status = 128 + signal.SIGINT
    except Exception as e:  # noqa: BLE001 - the process ends in leave_and_exit below
        if is_comm_failure(e):
            report(lost_contact(e, None, {}, "fp4swift train --resume --out DIR"))
            status = LOST_CONTACT_STATUS
        else:  # a bug: the traceback Python would print, then status 1
            traceback.print_exc()
            status, crashed = 1, True
    finally:
        leave_and_exit(status, completed=not crashed and status in (0, 1, 128 + signal.SIGINT, 128 + signal.SIGTERM))
    return status  # not reached: leave_and_exit ends the process


def _strip_nproc(argv: Sequence[str]) -> List[str]:
    """argv without its --nproc flag (also --nproc=P and unambiguous abbreviations)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if a.startswith("--np") and "--nproc".startswith(name):
            skip = "=" not in a
            continue
        out.append(a)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`fp4swift train --nproc P ...`: torchrun's engine (torch.distributed.run, standalone
    rendezvous on this machine) runs `python -m fp4swift train ...` (argv without --nproc) in P
    processes. Returns the run's exit status; prints one line only when rank 0 died without
    saying why (killed by a signal, say): the ranks print their own errors (`report`)."""
    if nproc <= 0:
        print(f"fp4swift train: error: --nproc must be positive, got {nproc}", file=sys.stderr)
        return 2
    if _env_int("WORLD_SIZE", 1) > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        print("fp4swift train: error: --nproc starts torchrun itself; under torchrun leave it out", file=sys.stderr)
        return 2
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    cores = available_cores()
    if nproc > cores:
        print(f"fp4swift train: warning: --nproc {nproc} on {cores} cores: the processes will share cores",
              file=sys.stderr)
    # torchrun sets OMP_NUM_THREADS=1 for its workers (and warns that it did); the runner sets
    # each recipe's threads itself (rank_threads, threads.configure_threads).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import tempfile

    fd, mark = tempfile.mkstemp(prefix="fp4swift-train-", suffix=".reported")
    os.close(fd)
    os.unlink(mark)
    os.environ[REPORTED_ENV] = mark
    targs = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "fp4swift",
                                 *_strip_nproc(argv)])
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # the workers speak for themselves
    try:
        torchrun.run(targs)
        return 0
    except ChildFailedError as e:
        writer = e.failures.get(0)
        # rank 0's own status when it ended with one (it printed why), else the first failure's
        rank, first = (0, writer) if writer is not None and writer.exitcode > 0 else e.get_first_failure()
        if not os.path.exists(mark):  # nobody said why: name the first failure
            how = (f"was killed by {first.signal_name()}" if first.exitcode < 0 else
                   f"exited with status {first.exitcode}")
            print(f"fp4swift train: error: rank {rank} of {nproc} {how}; the last checkpoints are intact, "
                  f"continue with --resume", file=sys.stderr)
        return 128 - first.exitcode if first.exitcode < 0 else first.exitcode
    except SignalException as e:
        return 128 + int(e.sigval)
    finally:
        try:
            os.unlink(mark)
        except OSError:
            pass
