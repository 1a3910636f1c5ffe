"""`fp4swift train` data-parallel under torchrun: DistributedDataParallel over gloo, 2 ranks on
the loopback interface of one machine (train/distributed.py).

Equality with one process: the 2-rank run trains on the same global batch, each rank on half of
its rows, and DDP sums the gradients of per-rank losses divided by the global token count, so the
update is the 1-process update up to float32 summation order (the forward GEMMs run on 2 rows
instead of 4, the weight-gradient sums split in two). Over these 6-step runs the losses agree
within RTOL = 1e-5 relative (measured on this project's Zen 4: below 1e-7) and the checkpoints'
weights within 1e-5 absolute (measured: below 1e-6); the first step's loss (the forward on the
common initialization) within 1e-6. A recipe with a per-tensor OCC threshold (wang2025) is the
control: its first loss already differs by about 2e-5, because each rank clamps at its own
shard's quantile. (In longer runs a float32 difference can flip an FP4 rounding decision, and
the flips grow: at the default model size the per-row recipe's losses differed by 1e-5 at step 5
and 1e-3 at step 60, fp32's by at most 5e-6.) An interrupted 2-rank run resumed with 2 ranks reproduces the uninterrupted one bit for
bit.

Each run is a ~30k-parameter model for a few steps; a torchrun launch costs a few seconds of
imports, and every subprocess has a hard timeout.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("this PyTorch build has no torch.distributed", allow_module_level=True)

import fp4swift  # noqa: E402
from fp4swift import cli  # noqa: E402
from fp4swift.train import distributed as dist  # noqa: E402
from fp4swift.train.outputs import load_checkpoint, read_metrics  # noqa: E402

RTOL = 1e-5
TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "4",
        "--no-progress", "--threads", "1"]
#: A subprocess that takes longer than this has hung: the test fails instead of waiting forever.
HARD_TIMEOUT = 240


def _has_fp4_torch() -> bool:
    try:
        import fp4swift.torch  # noqa: F401
    except ImportError:
        return False
    return True


#: fp32 and a per-row FP4 recipe: both shard-independent.
RECIPES = ["fp32", "wang2025:occ_per=row"] if _has_fp4_torch() else ["fp32"]
#: ... and the control, whose per-tensor OCC threshold sharding changes.
SHARDED = ["wang2025"] if _has_fp4_torch() else []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    rng = np.random.default_rng(19)
    words = ["def", "return", "self", "import", "for", "in", "if", "else", "x", "y", "value", "(", ")", ":",
             "=", "+", "1", "0", "None", "print", "class", "while", "len", "range", "[", "]", ","]
    lines = ["    " * int(rng.integers(0, 3)) + " ".join(rng.choice(words, size=int(rng.integers(3, 10))))
             for _ in range(2000)]
    path = tmp_path_factory.mktemp("corpus") / "text.py"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _env(**extra: str) -> dict:
    """The subprocesses import this fp4swift (not another install) and use the loopback interface."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fp4swift.__file__)))
    path = os.pathsep.join([pkg_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID", dist.TIMEOUT_ENV):
        env.pop(k, None)
    env.update(extra)
    return env


def _torchrun(args, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m fp4swift train ARGS` (PyTorch's launcher)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fp4swift", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=HARD_TIMEOUT)


def _fp4swift(args) -> subprocess.CompletedProcess:
    """`python -m fp4swift train ARGS` in a subprocess (e.g. with --nproc 2)."""
    return subprocess.run([sys.executable, "-m", "fp4swift", "train", *args], capture_output=True, text=True,
                          env=_env(), timeout=HARD_TIMEOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(argvs, **extra: str):
    """One `python -m fp4swift train` per argv, joined by PyTorch's env:// rendezvous exactly as
    torchrun's workers are (RANK, WORLD_SIZE, MASTER_ADDR, ...), but with no agent that would
    stop the others: what the ranks do on their own."""
    port = str(_free_port())
    procs = []
    for r, argv in enumerate(argvs):
        env = _env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(len(argvs)), LOCAL_WORLD_SIZE=str(len(argvs)),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra)
        procs.append(subprocess.Popen([sys.executable, "-m", "fp4swift", "train", *argv], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _finish(procs, timeout: float = HARD_TIMEOUT):
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return outs


def _error_lines(stderr: str):
    return [ln for ln in stderr.splitlines() if "error:" in ln]


def _curves(run, recipe):
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(os.path.join(run, recipe, "metrics.csv"))]


def _assert_close_curves(a, b):
    """Two runs' loss curves: the same steps, losses within RTOL (float32 summation order)."""
    for recipe in RECIPES:
        ca, cb = _curves(a, recipe), _curves(b, recipe)
        assert [c[0] for c in ca] == [c[0] for c in cb], recipe
        for (step, ta, va), (_, tb, vb) in zip(ca, cb):
            for x, y in ((ta, tb), (va, vb)):
                assert (x is None) == (y is None), (recipe, step)
                if x is not None:
                    assert abs(x - y) <= RTOL * abs(x), (recipe, step, x, y)


def _common(corpus, recipes=RECIPES):
    return TINY + ["--recipes", ",".join(recipes), "--steps", "6", "--eval-every", "2",
                   "--checkpoint-every", "3", "--data", corpus]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus) -> str:
    out = str(tmp_path_factory.mktemp("one") / "run")
    assert cli.main(["train"] + _common(corpus, RECIPES + SHARDED) + ["--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, corpus) -> str:
    out = str(tmp_path_factory.mktemp("two") / "run")
    p = _torchrun(_common(corpus, RECIPES + SHARDED) + ["--out", out])
    assert p.returncode == 0, p.stderr
    assert "data-parallel: 2 processes" in p.stdout
    # rank 0 alone logs and prints the summary
    assert p.stdout.count("| recipe | lr | final val loss") == 1 and p.stdout.count("model: ") == 1
    return out


# ---------------------------------------------------------------------------------------
# the same run in 1 and 2 processes


def test_two_ranks_equal_one_process(one_process, two_ranks):
    _assert_close_curves(one_process, two_ranks)
    for recipe in RECIPES:
        first_a, first_b = _curves(one_process, recipe)[1][1], _curves(two_ranks, recipe)[1][1]
        assert abs(first_a - first_b) <= 1e-6 * first_a, (recipe, first_a, first_b)
    for recipe in SHARDED:  # the control: per-tensor OCC thresholds over each rank's shard
        first_a, first_b = _curves(one_process, recipe)[1][1], _curves(two_ranks, recipe)[1][1]
        assert abs(first_a - first_b) > 1e-6 * first_a, (recipe, first_a, first_b)
    for recipe in RECIPES:
        a = load_checkpoint(os.path.join(one_process, recipe, "checkpoint.pt"))
        b = load_checkpoint(os.path.join(two_ranks, recipe, "checkpoint.pt"))
        assert a["step"] == b["step"] == 6 and b["world_size"] == 2 and a["world_size"] == 1
        assert list(a["model"]) == list(b["model"])  # the unwrapped model: no DDP "module." prefix
        for k in a["model"]:
            torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-5)
    # tokens: the global batch, once (not per rank)
    run1 = json.load(open(os.path.join(one_process, "run.json")))
    run2 = json.load(open(os.path.join(two_ranks, "run.json")))
    assert run1["tokens"] == run2["tokens"] == 6 * 4 * 32
    summary = open(os.path.join(two_ranks, "summary.md")).read()
    assert "Data-parallel over 2 processes" in summary and "tokens/s counts the tokens of all 2 processes" in summary
    assert f"{', '.join(RECIPES)}: no statistics over the batch" in summary
    if SHARDED:
        assert "Sharding changes the numbers of these recipes" in summary
        assert "**wang2025**: the per-tensor OCC threshold (the 0.99-quantile of |X|)" in summary
    assert "Data-parallel" not in open(os.path.join(one_process, "summary.md")).read()


def test_checkpoints_are_interchangeable(tmp_path, corpus, one_process):
    """Across process counts and machines: 2 ranks started by two torchrun agents with --nnodes 2,
    each in its own working directory as on two machines, stopped after 3 steps, finished by one
    process; and a 1-process run stopped after 3 steps, finished by the two "machines". Only rank
    0's machine ever gets a run directory (the other reads config.json and the checkpoints
    through rank 0), and both runs equal the 1-process run."""
    machines = [tmp_path / "a", tmp_path / "b"]
    for m in machines:
        m.mkdir()

    def two_machines(args):
        port = _free_port()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=t19-{port}",
               "-m", "fp4swift", "train", *args]
        procs = [subprocess.Popen(cmd, cwd=m, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for m in machines]
        outs = _finish(procs)
        return [p.returncode for p in procs], outs

    codes, outs = two_machines(_common(corpus) + ["--out", "two_then_one", "--stop-after", "3"])
    assert all(c != 0 for c in codes), outs  # the workers exit 130 (interrupted); torchrun then 1
    written = [m for m in machines if (m / "two_then_one").exists()]
    assert len(written) == 1, outs
    two_then_one = str(written[0] / "two_then_one")
    assert any(f"fp4swift train --resume --out two_then_one" in err for _, err in outs)
    rc = cli.main(["train", "--resume", "--out", two_then_one, "--no-progress", "--threads", "1"])
    assert rc == 0
    _assert_close_curves(one_process, two_then_one)

    writer = written[0]
    one_then_two = str(writer / "one_then_two")
    assert cli.main(["train"] + _common(corpus) + ["--out", one_then_two, "--stop-after", "3"]) == 130
    codes, outs = two_machines(["--resume", "--out", "one_then_two", "--no-progress", "--threads", "1"])
    assert codes == [0, 0], outs
    assert any("the run used 1 process(es), this session 2" in out for out, _ in outs)
    assert not any((m / "one_then_two").exists() for m in machines if m != writer)
    _assert_close_curves(one_process, one_then_two)


def test_interrupted_two_rank_run_resumes_exactly(tmp_path, corpus):
    """Ctrl-C (SIGINT) to `fp4swift train --nproc 2`: torchrun forwards it, the ranks agree on the
    step to stop after, rank 0 writes the checkpoints; resumed with 2 ranks the run equals the
    uninterrupted one bit for bit."""
    common = TINY + ["--recipes", ",".join(RECIPES), "--steps", "60", "--eval-every", "10",
                     "--checkpoint-every", "1000", "--data", corpus]
    ref = str(tmp_path / "ref")
    p = _fp4swift(common + ["--out", ref, "--nproc", "2"])
    assert p.returncode == 0, p.stderr
    out = str(tmp_path / "sig")
    proc = subprocess.Popen([sys.executable, "-m", "fp4swift", "train", *common, "--out", out, "--nproc", "2"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out, "fp32", "metrics.csv")):  # written at step 10: mid-run
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    so, se = proc.communicate(timeout=HARD_TIMEOUT)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, se
    assert f"fp4swift train --resume --out {out}" in se and "Traceback" not in se
    assert se.count("fp4swift train: interrupted") == 1  # rank 0 alone speaks
    assert not os.path.exists(os.path.join(out, "summary.md"))
    p = _fp4swift(["--resume", "--out", out, "--no-progress", "--threads", "1", "--nproc", "2"])
    assert p.returncode == 0, p.stderr
    for recipe in RECIPES:
        assert _curves(out, recipe) == _curves(ref, recipe), recipe


# ---------------------------------------------------------------------------------------
# failures: one line, no hang


def test_a_killed_rank_ends_the_run(tmp_path, corpus):
    """SIGKILL to rank 1 mid-run: rank 0 sees gloo's connection close at once and exits non-zero
    with one line naming the intact checkpoints; the run ends well within the timeout."""
    out = str(tmp_path / "killed")
    args = TINY + ["--recipes", "fp32", "--steps", "100000", "--eval-every", "5", "--checkpoint-every", "5",
                   "--data", corpus, "--out", out, "--nproc", "2", "--dist-timeout", "20"]
    proc = subprocess.Popen([sys.executable, "-m", "fp4swift", "train", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(out, "fp32", "checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        workers = [int(c) for t in os.listdir(f"/proc/{proc.pid}/task")
                   for c in open(f"/proc/{proc.pid}/task/{t}/children").read().split()]
        ranks = {}
        for w in workers:
            env = dict(kv.split("=", 1) for kv in open(f"/proc/{w}/environ").read().split("\0") if "=" in kv)
            ranks[int(env["RANK"])] = w
        assert sorted(ranks) == [0, 1]
        t0 = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        so, se = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 20, took
    errors = _error_lines(se)
    assert len(errors) == 1, se
    assert "lost contact with another process" in errors[0] and "checkpoints are intact" in errors[0], se
    assert f"--resume --out {out}" in errors[0]
    assert load_checkpoint(os.path.join(out, "fp32", "checkpoint.pt"))["step"] % 5 == 0


def test_a_hung_rank_times_out(tmp_path, corpus):
    """Rank 1 stopped (SIGSTOP) mid-run, no torchrun agent to clean up: rank 0 waits --dist-timeout
    5 s in its next collective, then exits with status 3 and one line."""
    out = str(tmp_path / "hung")
    args = TINY + ["--recipes", "fp32", "--steps", "100000", "--eval-every", "5", "--checkpoint-every", "5",
                   "--data", corpus, "--out", out, "--dist-timeout", "5"]
    procs = _ranks([args, args])
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(out, "fp32", "checkpoint.pt")):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.2)
        t0 = time.monotonic()
        procs[1].send_signal(signal.SIGSTOP)
        so, se = procs[0].communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode == dist.LOST_CONTACT_STATUS, se
    assert 4 < took < 5 + 15, took
    errors = _error_lines(se)
    assert len(errors) == 1 and "did not answer within 5 s" in errors[0] and "Timed out" in errors[0], se


# ---------------------------------------------------------------------------------------
# bad input: one line


def test_batch_not_divisible_by_the_ranks(tmp_path, corpus):
    out = tmp_path / "odd"
    args = TINY[:TINY.index("--batch-size")] + TINY[TINY.index("--batch-size") + 2:]
    p = _torchrun(args + ["--batch-size", "5", "--recipes", "fp32", "--steps", "2", "--data", corpus,
                          "--out", str(out)])
    assert p.returncode != 0
    # rank 0 prints the one line (torchrun then reports the failed workers in its own words)
    errors = [ln for ln in _error_lines(p.stderr) if ln.startswith("fp4swift train: error:")]
    assert errors == ["fp4swift train: error: --batch-size 5 (the global batch) does not split evenly over 2 "
                      "processes; use a multiple of 2"], p.stderr
    assert not out.exists()


def test_mismatched_flags_between_ranks(tmp_path, corpus):
    out = str(tmp_path / "mismatch")
    base = TINY + ["--recipes", "fp32", "--steps", "2", "--data", corpus, "--out", out]
    procs = _ranks([base + ["--lr", "0.002"], base + ["--lr", "0.001"]])
    (so0, se0), (so1, se1) = _finish(procs)
    assert procs[0].returncode == procs[1].returncode == 2, (se0, se1)
    assert _error_lines(se1) == []
    errors = _error_lines(se0)
    assert len(errors) == 1, se0
    assert "different flags: rank 1" in errors[0] and "--lr '0.001' (rank 0: '0.002')" in errors[0]
    assert not os.path.exists(out)


def test_nproc_refuses_bad_values(capsys, monkeypatch):
    assert cli.main(["train", "--nproc", "0"]) == 2
    assert "--nproc must be positive" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert cli.main(["train", "--dist-timeout", "0", "--steps", "1"]) == 2
    assert "--dist-timeout must be a positive number" in capsys.readouterr().err


def test_strip_nproc():
    assert dist._strip_nproc(["train", "--nproc", "2", "--steps", "3"]) == ["train", "--steps", "3"]
    assert dist._strip_nproc(["train", "--nproc=2", "--npro", "4", "--lr", "1"]) == ["train", "--lr", "1"]


# ---------------------------------------------------------------------------------------
# which recipes sharding changes


@pytest.mark.skipif(not _has_fp4_torch(), reason="needs fp4swift.torch")
def test_shard_dependence_names_whole_batch_statistics():
    assert dist.shard_dependence("fp32") == []
    assert dist.shard_dependence("wang2025:occ_per=row") == []
    assert dist.shard_dependence("wang2025:occ=off") == []
    assert dist.shard_dependence("mxfp4:gradient=none:backward_grouping=stored") == []
    assert dist.shard_dependence("wang2025") == ["the per-tensor OCC threshold (the 0.99-quantile of |X|)"]
    assert dist.shard_dependence("fp4-direct") == ["the per-tensor scale of X"]
    assert "the dW GEMM's blocks along the tokens" in dist.shard_dependence("mxfp4")
    nv = dist.shard_dependence("nvfp4")
    assert any("stochastic rounding of dY" in r for r in nv) and any("Hadamard" in r for r in nv)
    assert any("Quartet" in r for r in dist.shard_dependence("quartet"))
    assert "the per-tensor scale of dY" in dist.shard_dependence("fp8")
    # zhou2025's attention layers are fp8: their backward quantizers count too
    assert "the per-column scales of X in the dW GEMM (over the tokens)" in dist.shard_dependence("zhou2025")
    # a target-precision schedule's target counts from the switch on
    assert dist.shard_dependence("wang2025:occ_per=row:switch_at=0.5") == [
        "after the switch to fp8, " + why for why in dist.shard_dependence("fp8")]
    assert dist.shard_dependence("wang2025:occ_per=row:switch_at=0.5:switch_to=fp32") == []
    assert dist.shard_dependence("zhou2025:switch_at=0.5") == dist.shard_dependence("zhou2025")  # fp8 adds nothing
    # each rank draws its own stochastic roundings: rank r's call counter starts at r·2^40
    from fp4swift import linear

    saved = linear._CALLS
    try:
        dist._decorrelate_draws(3)
        assert next(linear._CALLS) == 3 << 40
    finally:
        linear._CALLS = saved


def test_memory_check_counts_the_processes_of_a_machine(monkeypatch):
    from fp4swift.train.config import RunError, TrainConfig
    from fp4swift.train.memory import check_memory, estimate

    cfg = TrainConfig(recipes=["fp32"])
    need = estimate(cfg).total_bytes
    monkeypatch.setenv("FP4SWIFT_MEMORY_BUDGET", str(int(need * 1.5)))
    check_memory(cfg)  # one process fits
    with pytest.raises(RunError, match="per process, x 2 processes on this machine"):
        check_memory(cfg, processes=2)


def test_two_ranks_train_every_trial_of_a_multi_seed_sweep(tmp_path, corpus):
    """Trials (recipe x rate x seed) under torchrun: the same folders and the same curves as in
    one process, within the same tolerance."""
    args = TINY + ["--recipes", "fp32", "--steps", "4", "--eval-every", "2", "--data", corpus, "--seeds", "2",
                   "--lr", "2e-3,4e-3"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert cli.main(["train"] + args + ["--out", one]) == 0
    p = _torchrun(args + ["--out", two])
    assert p.returncode == 0, p.stderr
    for trial in ("fp32/lr0.002/seed0", "fp32/lr0.002/seed1", "fp32/lr0.004/seed0", "fp32/lr0.004/seed1"):
        ca, cb = _curves(one, trial), _curves(two, trial)
        assert [c[0] for c in ca] == [c[0] for c in cb] == [0, 1, 2, 3, 4], trial
        for (_, ta, va), (_, tb, vb) in zip(ca, cb):
            for x, y in ((ta, tb), (va, vb)):
                assert (x is None and y is None) or abs(x - y) <= RTOL * abs(x), (trial, x, y)
    assert "Learning-rate sweep" in open(os.path.join(two, "summary.md")).read()
