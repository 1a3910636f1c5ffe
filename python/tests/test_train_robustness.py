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
