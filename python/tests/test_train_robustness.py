"""Issue 18: `fp4swift train` and the other commands under misuse, faults and concurrency.

Tiny models, few steps: every case that trains runs a ~10k-parameter model for a handful of
steps. Each test here failed before its fix.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

from fp4swift import cli  # noqa: E402
from fp4swift.train import recipes as trecipes  # noqa: E402
from fp4swift.train.config import RunError  # noqa: E402

from test_train import TINY, _write_corpus  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "text")


def _train(argv, capsys):
    rc = cli.main(["train"] + list(argv))
    return rc, capsys.readouterr()


def _one_error_line(cap, prefix="fp4swift train: error:"):
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), cap.err
    return lines[0]


def _last_error_line(cap, prefix="fp4swift train: error:"):
    """The error of a run that had started: earlier lines are its warnings (skipped files)."""
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(prefix), cap.err
    assert all(ln.startswith("fp4swift train: warning:") for ln in lines[:-1]), cap.err
    return lines[-1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _cli(args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "fp4swift.cli"] + list(args), cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300, **kw)


# ---------------------------------------------------------------------------------------
# item 8: recipe specs and flags on the command line


@pytest.mark.parametrize("spec, needle", [
    ("wang2025:input=foo", "input must be"),
    ("wang2025:dge=1.5", "dge must be on or off"),
    ("wang2025:dge=maybe", "dge must be on or off"),
    ("wang2025:dge=off:dge=on", "dge is given twice"),
    ("zhou2025:switch_at=0.5:switch_at=0.9", "switch_at is given twice"),
])
def test_bad_recipe_specs_are_one_line(tmp_path, corpus, capsys, spec, needle):
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus, "--recipes", spec, "--out", str(tmp_path / "o")],
                     capsys)
    assert rc == 2
    assert needle in _one_error_line(cap)
    assert not (tmp_path / "o").exists()


def test_quantizer_fields_in_specs():
    r = trecipes.resolve_recipe("wang2025:gradient=none")
    assert r.gradient is None
    r = trecipes.resolve_recipe("wang2025:input=e4m3")
    assert r.input.fmt == "e4m3" and r.input.granularity == "row"
    r = trecipes.resolve_recipe("fp4-direct:gradient=e5m2/tensor/pow2")
    assert (r.gradient.fmt, r.gradient.granularity, r.gradient.scale_rule) == ("e5m2", "tensor", "pow2")
    with pytest.raises(RunError, match="input must be"):
        trecipes.resolve_recipe("wang2025:input=foo")


@pytest.mark.parametrize("flags, needle", [
    (["--warmup", "-5"], "--warmup"),
    (["--mlp-hidden", "-3"], "--mlp-hidden"),
    (["--mlp-hidden", "0"], "--mlp-hidden"),
])
def test_negative_sizes_are_refused(tmp_path, corpus, capsys, flags, needle):
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus, "--recipes", "fp32", "--out", str(tmp_path / "o")]
                     + flags, capsys)
    assert rc == 2
    assert needle in _one_error_line(cap)


def _start(args, cwd=None):
    """A `fp4swift train` process; returns once it holds its run directory (the output line)."""
    p = subprocess.Popen([sys.executable, "-m", "fp4swift.cli", "train"] + list(args), cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(_env(), PYTHONUNBUFFERED="1"))
    for line in p.stdout:
        if line.startswith("output:"):
            break
    return p


def _stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.communicate(timeout=120)


# ---------------------------------------------------------------------------------------
# item 1: one run per directory


def test_a_running_directory_is_locked_against_a_second_train_and_resume(tmp_path, corpus):
    out = tmp_path / "run"
    long = TINY + ["--recipes", "fp32", "--steps", "100000", "--eval-every", "1000", "--checkpoint-every", "1000",
                   "--data", corpus]
    first = _start(long + ["--out", str(out)])
    try:
        second = _cli(["train"] + long + ["--out", str(out)])
        resumed = _cli(["train", "--resume", "--out", str(out), "--no-progress"])
        for r in (second, resumed):
            assert r.returncode == 2
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1 and "in use by another fp4swift train" in lines[0], r.stderr
            assert f"pid {first.pid}" in lines[0]
    finally:
        _, err = _stop(first)
    assert first.returncode == 128 + signal.SIGTERM, err
    # the lock went with the process: the run resumes (and is stopped again at once)
    r = _cli(["train", "--resume", "--out", str(out), "--no-progress", "--stop-after", "1"])
    assert r.returncode == 130 and "in use" not in r.stderr


def test_two_runs_started_together_get_two_directories(tmp_path, corpus):
    args = TINY + ["--recipes", "fp32", "--steps", "2", "--eval-every", "1", "--data", corpus]
    procs = [subprocess.Popen([sys.executable, "-m", "fp4swift.cli", "train"] + args, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted(d for d in os.listdir(tmp_path / "runs") if d != "latest")
    assert len(runs) == 2
    for d in runs:
        cfg = json.loads((tmp_path / "runs" / d / "config.json").read_text())
        assert cfg["steps"] == 2
        assert (tmp_path / "runs" / d / "fp32" / "checkpoint.pt").is_file()


def test_default_directory_is_created_by_the_call_that_names_it(tmp_path, monkeypatch):
    """The name is taken by os.mkdir, not checked and used later: with the clock frozen (two runs
    in the same second), every call gets a directory of its own, created and empty."""
    import datetime
    import types

    from fp4swift.train import rundir

    frozen = datetime.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(rundir, "_dt", types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: frozen)))
    root = str(tmp_path / "runs")
    got = [rundir.create_default_dir(root) for _ in range(3)]
    assert got == [os.path.join(root, "20260102-030405"), os.path.join(root, "20260102-030405-2"),
                   os.path.join(root, "20260102-030405-3")]
    assert all(os.path.isdir(d) and not os.listdir(d) for d in got)


# ---------------------------------------------------------------------------------------
# item 2: everything that depends on input is checked before anything is written


@pytest.mark.parametrize("argv, needle", [
    (["--recipes", "quartet", "--d-model", "48", "--heads", "2"], "recipe 'quartet' cannot run layer"),
    (["--recipes", "fp32,wang2025:granularity=block(7)"], "cannot run layer"),
    (["--recipes", "zhou2025", "--d-model", "40", "--heads", "2", "--mlp-hidden", "64"], "zhou2025"),
    (["--eval-batches", "100000000"], "validation batches"),
    (["--batch-size", "10000000"], "activations of one step"),
])
def test_late_failures_now_fail_first_and_leave_nothing(tmp_path, corpus, capsys, argv, needle):
    out = tmp_path / "o"
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus, "--out", str(out)] + argv, capsys)
    assert rc == 2
    assert needle in _one_error_line(cap)
    assert not out.exists()


def test_a_file_in_the_way_of_a_recipe_folder(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "fp32").write_text("not a folder")
    rc, cap = _train(TINY + ["--steps", "2", "--recipes", "fp32", "--data", corpus, "--out", str(out)], capsys)
    assert rc == 2
    line = _one_error_line(cap)
    assert f"cannot write {out / 'fp32'}: a file is in the way" in line
    assert sorted(os.listdir(out)) == ["fp32"]  # no config.json: a corrected rerun is not "already a run"
    (out / "fp32").unlink()
    rc, cap = _train(TINY + ["--steps", "2", "--recipes", "fp32", "--data", corpus, "--out", str(out)], capsys)
    assert rc == 0, cap.err


# ---------------------------------------------------------------------------------------
# item 3: write errors are one line


def test_out_naming_a_file(tmp_path, corpus, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus, "--out", str(f)], capsys)
    assert rc == 2
    assert _one_error_line(cap) == f"fp4swift train: error: cannot write {f}: a file is in the way (not a directory)"


def test_unwritable_working_directory_is_found_before_the_data_is_read(tmp_path, corpus, capsys, monkeypatch):
    import errno
    import tempfile

    from fp4swift.train import rundir, runner

    monkeypatch.chdir(tmp_path)

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    def no_data(*a, **kw):
        raise AssertionError("the data was loaded before the output was checked")

    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(runner, "load_corpus", no_data)
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus], capsys)
    assert rc == 2
    assert _one_error_line(cap) == f"fp4swift train: error: cannot write {tmp_path}: Read-only file system"
    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", tempfile.TemporaryFile)
    (tmp_path / "runs").write_text("in the way")
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus], capsys)
    assert rc == 2 and "cannot write runs: a file is in the way" in _one_error_line(cap)


def test_full_disk_mid_run_names_the_intact_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    import errno

    from fp4swift.train import outputs

    real = outputs.atomic_write_bytes
    calls = []

    def full_after_one(path, data):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", full_after_one)
    out = tmp_path / "o"
    args = TINY + ["--recipes", "fp32", "--steps", "6", "--checkpoint-every", "2", "--eval-every", "2",
                   "--data", corpus, "--out", str(out)]
    rc, cap = _train(args, capsys)
    assert rc == 2
    line = _last_error_line(cap)
    assert f"cannot write {out / 'fp32' / 'checkpoint.pt'}: No space left on device" in line
    assert "the last checkpoints are intact (fp32: step 2)" in line and f"--resume --out {out}" in line
    monkeypatch.setattr(outputs, "atomic_write_bytes", real)
    assert not [n for n in os.listdir(out / "fp32") if n.endswith(".tmp")]
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    assert "resuming at step 2" in cap.out


# ---------------------------------------------------------------------------------------
# item 4: memory


def test_a_run_too_big_for_memory_is_refused_at_once(tmp_path, corpus, capsys):
    t0 = time.perf_counter()
    rc, cap = _train(["--d-model", "20000", "--no-progress", "--data", corpus, "--out", str(tmp_path / "o")], capsys)
    took = time.perf_counter() - t0
    assert rc == 2
    line = _one_error_line(cap)
    assert "needs about" in line and "19,212,980,000 parameters x 3 trials" in line and "available" in line
    assert took < 1.0
    assert not (tmp_path / "o").exists()


def test_memory_budget_and_parameter_count(monkeypatch, tmp_path, corpus, capsys):
    from fp4swift.train.config import TrainConfig
    from fp4swift.train.memory import estimate, parameter_count
    from fp4swift.train.model import build_model, count_parameters

    for kw in [dict(), dict(arch="gpt2"), dict(tie_embeddings=True, d_model=64, heads=2, layers=3),
               dict(arch="gpt2", tie_embeddings=True, mlp_hidden=96, d_model=64, heads=2, layers=2),
               dict(d_model=96, heads=3, layers=2, mlp_hidden=200)]:
        cfg = TrainConfig(**kw)
        assert parameter_count(cfg) == count_parameters(build_model(cfg.model_config(), 0))
    small, big = estimate(TrainConfig()), estimate(TrainConfig(batch_size=64, recipes=["fp32"] * 5))
    assert big.activation_bytes > small.activation_bytes and big.model_bytes > small.model_bytes
    monkeypatch.setenv("FP4SWIFT_MEMORY_BUDGET", "100M")
    rc, cap = _train(TINY + ["--steps", "2", "--data", corpus, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "only 105 MB of memory is available" in _one_error_line(cap)


# ---------------------------------------------------------------------------------------
# item 5: resume checks


def test_resume_refuses_another_recipes_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    args = TINY + ["--recipes", "fp32,fp4-direct", "--steps", "20", "--data", corpus, "--out", str(out)]
    rc, cap = _train(args + ["--stop-after", "1"], capsys)
    assert rc == 130, cap.err
    (out / "fp4-direct" / "checkpoint.pt").write_bytes((out / "fp32" / "checkpoint.pt").read_bytes())
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress"], capsys)
    assert rc == 2
    assert "is a checkpoint of recipe 'fp32', not 'fp4-direct'" in _one_error_line(cap)


def test_resume_refuses_changed_data(tmp_path, capsys):
    data = _write_corpus(tmp_path / "data")
    out = tmp_path / "o"
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "20", "--data", data, "--out", str(out),
                             "--stop-after", "1"], capsys)
    assert rc == 130, cap.err
    stored = json.loads((out / "config.json").read_text())["corpus"]
    assert stored["sha256"] and stored["train_bytes"] > 0 and stored["val_bytes"] > 0
    with open(os.path.join(data, "mod_1.py"), "a") as fh:
        fh.write("print('one more line')\n")
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress"], capsys)
    assert rc == 2
    assert "the data changed since this run started" in _one_error_line(cap)
    # a config.json from before the fingerprint resumes without the check
    cfg = json.loads((out / "config.json").read_text())
    del cfg["corpus"]
    (out / "config.json").write_text(json.dumps(cfg))
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress", "--stop-after", "1"], capsys)
    assert rc == 130, cap.err


# ---------------------------------------------------------------------------------------
# item 6: --data


def test_a_text_file_over_64_mb_is_read(tmp_path):
    from fp4swift.train import data as tdata

    line = b"def f(x):\n    return x + 1  # some code\n"
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        for _ in range((65 << 20) // (1 << 20) + 1):
            fh.write(line * ((1 << 20) // len(line)))
    c = tdata.load_corpus(str(big))
    assert c.train.size + c.val.size == big.stat().st_size > 64 << 20
    assert bytes(c.val[-len(line):]) == line


def test_data_errors_name_the_reason(tmp_path, monkeypatch):
    import errno

    from fp4swift.train import data as tdata

    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(tdata.DataError, match="not a text file"):
        tdata.load_corpus(str(binary))
    text = tmp_path / "t.txt"
    text.write_text("hello\n" * 100)

    def denied(path, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(tdata, "open", denied, raising=False)
    with pytest.raises(tdata.DataError, match=r"cannot read the file: Permission denied"):
        tdata.load_corpus(str(text))
    monkeypatch.undo()

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("x = 1\n" * 50)
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.abspath(path) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(tdata.DataError, match=r"cannot read the directory: Permission denied"):
        tdata.load_corpus(str(folder))


def test_skipped_files_are_counted_and_reported(tmp_path, corpus, capsys, monkeypatch):
    import errno

    from fp4swift.train import data as tdata

    real_open = open

    def some_denied(path, *a, **kw):
        if str(path).endswith("mod_2.py"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(tdata, "open", some_denied, raising=False)
    c = tdata.load_corpus(corpus)
    assert c.skipped == {"binary": 1, "unreadable (Permission denied)": 1}
    monkeypatch.undo()
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "2", "--data", corpus, "--out", str(tmp_path / "o")],
                     capsys)
    assert rc == 0
    assert f"fp4swift train: warning: skipped 1 file under {corpus}: 1 binary" in cap.err


# ---------------------------------------------------------------------------------------
# item 7: signals, leftovers, divergence, logs, metrics


def test_sigterm_checkpoints_like_ctrl_c_and_resume_is_exact(tmp_path, corpus, capsys):
    steps = 200
    common = TINY + ["--recipes", "fp32", "--steps", str(steps), "--eval-every", "10", "--checkpoint-every", "1000",
                     "--data", corpus]
    out = tmp_path / "sig"
    p = _start(common + ["--out", str(out)])
    time.sleep(1.0)
    so, se = _stop(p)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == 143, se
    assert "SIGTERM: stopping after the current step" in se and "--resume --out" in se and "Traceback" not in se
    assert (out / "fp32" / "checkpoint.pt").is_file()
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    rc, cap = _train(common + ["--out", str(tmp_path / "ref")], capsys)
    assert rc == 0
    assert (out / "fp32" / "metrics.csv").read_text().count("\n") == \
        (tmp_path / "ref" / "fp32" / "metrics.csv").read_text().count("\n")
    from test_train import _loss_columns

    assert _loss_columns(out / "fp32" / "metrics.csv") == _loss_columns(tmp_path / "ref" / "fp32" / "metrics.csv")


def test_leftover_temporary_files_are_removed(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "4", "--data", corpus, "--out", str(out),
                             "--stop-after", "1"], capsys)
    assert rc == 130
    stale = [out / "fp32" / ".checkpoint.pt.k3j_9xq2.tmp", out / ".run.json.abcdefgh.tmp",
             out / ".loss_curves.png.a1b2c3d4.png"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    keep = out / "fp32" / "notes.tmp"
    keep.write_text("mine")
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, cap.err
    assert not any(f.exists() for f in stale) and keep.exists()
    assert "removed 3 temporary file(s)" in cap.err


def test_every_recipe_diverged_exits_non_zero(tmp_path, corpus, capsys, monkeypatch):
    from fp4swift.train import runner

    monkeypatch.setattr(runner, "train_step", lambda *a, **kw: (float("nan"), 0.01))
    rc, cap = _train(TINY + ["--recipes", "fp32,fp4-direct", "--steps", "4", "--data", corpus,
                             "--out", str(tmp_path / "o")], capsys)
    assert rc == 1
    assert "every recipe diverged (fp32 at step 1, fp4-direct at step 1)" in cap.err


def test_progress_into_a_log_has_no_escape_codes(tmp_path, corpus, capsys):
    args = [a for a in TINY if a != "--no-progress"]
    rc, cap = _train(args + ["--recipes", "fp32,fp4-direct", "--steps", "4", "--eval-every", "2", "--data", corpus,
                             "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, cap.err
    assert "\x1b" not in cap.err and "\r" not in cap.err
    assert "[fp4-direct] step 4/4: loss" in cap.err


def test_metrics_are_written_at_every_evaluation(tmp_path, corpus, capsys, monkeypatch):
    from fp4swift.train import runner
    from fp4swift.train.outputs import read_metrics

    out = tmp_path / "o"
    seen = []
    real = runner.evaluate

    def evaluate(model, batches):
        path = out / "fp32" / "metrics.csv"
        seen.append([r["step"] for r in read_metrics(path)] if path.exists() else None)
        return real(model, batches)

    monkeypatch.setattr(runner, "evaluate", evaluate)
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "6", "--eval-every", "2", "--checkpoint-every", "100",
                             "--data", corpus, "--out", str(out)], capsys)
    assert rc == 0, cap.err
    # evaluations at steps 0, 2, 4, 6: each finds the rows up to the one before on disk
    assert seen[0] is None
    assert seen[2] == [0, 1, 2] and seen[3] == [0, 1, 2, 3, 4]


def test_fidelity_progress_into_a_log_has_no_escape_codes(corpus, capsys):
    rc = cli.main(["fidelity", "--d-model", "32", "--layers", "1", "--heads", "2", "--seq-len", "32",
                   "--batch-size", "4", "--steps", "3", "--threads", "1", "--data", corpus])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "\r" not in cap.err and "\x1b" not in cap.err
