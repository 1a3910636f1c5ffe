"""The training experiment (`fp4swift train`, `fp4swift fidelity`) on tiny configurations.

Every run here is a few dozen steps of a ~30k-parameter model on a small temporary corpus,
so the module stays well under a minute and a half on two cores.
"""
from __future__ import annotations

import csv
import math
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fp4swift as f4  # noqa: E402
from fp4swift import cli  # noqa: E402
from fp4swift.train import data as tdata  # noqa: E402
from fp4swift.train.model import ModelConfig, build_model, count_parameters  # noqa: E402
from fp4swift.train.outputs import read_metrics  # noqa: E402
from fp4swift.train.runner import INTERLEAVE_STEPS  # noqa: E402

TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "4",
        "--no-progress", "--threads", "1"]


def _has_fp4_torch() -> bool:
    try:
        import fp4swift.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _write_corpus(root, files: int = 12, seed: int = 0) -> str:
    """A small deterministic text corpus: Python-ish lines, several files in two folders."""
    rng = np.random.default_rng(seed)
    words = ["def", "return", "self", "import", "for", "in", "if", "else", "x", "y", "value", "(", ")", ":",
             "=", "+", "1", "0", "None", "print", "class", "while", "len", "range", "[", "]", ","]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / ("pkg" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        lines = []
        for _ in range(120):
            n = int(rng.integers(3, 10))
            lines.append("    " * int(rng.integers(0, 3)) + " ".join(rng.choice(words, size=n)))
        (sub / f"mod_{i}.py").write_text("\n".join(lines) + "\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)  # binary: must be ignored
    return str(root)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "text")


def _train(argv, capsys=None):
    rc = cli.main(["train"] + list(argv))
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def _loss_columns(path):
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(path)]


def _fp4_recipes():
    return [r for r in f4.recipes() if r != "fp32"]


# ---------------------------------------------------------------------------------------
# model and data


def test_model_shapes_names_and_parameter_count():
    cfg = ModelConfig(d_model=32, layers=2, heads=2, seq_len=16)
    m = build_model(cfg, seed=3)
    logits = m(torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256)
    names = {n.rsplit(".", 1)[-1] for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    d, h = 32, cfg.hidden
    expected = 256 * d * 2 + 2 * (4 * d * d + 3 * d * h + 2 * d) + d
    assert count_parameters(m) == expected
    tied = build_model(ModelConfig(d_model=32, layers=2, heads=2, seq_len=16, tie_embeddings=True), seed=3)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert count_parameters(tied) == expected - 256 * d
    # same seed, same weights; different seed, different weights
    again = build_model(cfg, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), again.state_dict().values()))
    other = build_model(cfg, seed=4)
    assert not torch.equal(m.layers[0].self_attn.q_proj.weight, other.layers[0].self_attn.q_proj.weight)


def test_model_is_causal():
    cfg = ModelConfig(d_model=32, layers=2, heads=2, seq_len=16)
    m = build_model(cfg, seed=0).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 7) % 256
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_convert_policy_on_the_model():
    f4t = pytest.importorskip("fp4swift.torch")
    m = build_model(ModelConfig(d_model=32, layers=2, heads=2, seq_len=16), seed=0)
    f4t.convert_(m, recipe="wang2025")
    conv = {n for n, mod in m.named_modules() if isinstance(mod, f4t.FP4Linear)}
    assert len(conv) == 2 * 7 and not any(n.endswith("lm_head") for n in conv)
    assert type(m.lm_head) is torch.nn.Linear


def test_sampler_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.int64).astype(np.uint8)
    a = tdata.train_batch(tokens, 5, 17, 4, 32)
    b = tdata.train_batch(tokens, 5, 17, 4, 32)
    c = tdata.train_batch(tokens, 5, 18, 4, 32)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(a[0][:, 1:], a[1][:, :-1])  # targets are the inputs shifted by one
    assert a[0].shape == (4, 32) and a[0].dtype == np.int64


def test_split_by_file_is_deterministic(corpus):
    c1, c2 = tdata.load_corpus(corpus), tdata.load_corpus(corpus)
    assert c1.files == 12  # blob.bin (binary) is not a text file
    assert np.array_equal(c1.train, c2.train) and np.array_equal(c1.val, c2.val)
    assert c1.train.size > 0 and c1.val.size > 0
    # a single file falls back to holding out the tail of the bytes
    one = tdata.load_corpus(os.path.join(corpus, "mod_1.py"))
    assert one.files == 1 and one.split.startswith("by position")
    assert 0 < one.val.size < one.train.size


def test_stdlib_is_the_default_corpus():
    c = tdata.load_corpus(None)
    assert c.files > 50 and c.val_files > 0 and c.train.size > 1_000_000
    assert c.val.size < c.train.size / 5


# ---------------------------------------------------------------------------------------
# training


def _loss_drops(rdir):
    rows = read_metrics(os.path.join(rdir, "metrics.csv"))
    vals = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    trains = [r["train_loss"] for r in rows if r["train_loss"] is not None]
    assert all(math.isfinite(v) for v in vals + trains)
    assert vals[-1] < vals[0] - 0.5, vals          # initial ≈ ln 256 = 5.55
    assert np.mean(trains[-5:]) < np.mean(trains[:5]) - 0.5, trains
    return rows


def test_fp32_training_reduces_loss_and_writes_outputs(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "30", "--lr", "1e-2", "--eval-every", "10",
                             "--data", corpus, "--out", str(out)], capsys)
    assert rc == 0, cap.err
    rows = _loss_drops(out / "fp32")
    assert [r["step"] for r in rows] == list(range(31))
    assert all(r["tokens_per_s"] > 0 for r in rows[1:])
    assert all(b["elapsed_s"] >= a["elapsed_s"] for a, b in zip(rows, rows[1:]))
    for f in ("config.json", "summary.md", "summary.csv", "loss_curves.png", "fp32/checkpoint.pt"):
        assert (out / f).is_file(), f
    with open(out / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert summary[0]["recipe"] == "fp32" and float(summary[0]["gap_to_fp32_pct"]) == 0.0
    assert float(summary[0]["relative_cost"]) == 1.0
    assert abs(float(summary[0]["final_val_loss"]) - rows[-1]["val_loss"]) < 1e-12
    assert "| fp32 |" in cap.out and "parameters" in cap.out
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


@pytest.mark.parametrize("recipe", _fp4_recipes())
def test_fp4_recipe_training_reduces_loss(tmp_path, corpus, capsys, recipe):
    pytest.importorskip("fp4swift.torch")
    out = tmp_path / "run"
    rc, cap = _train(TINY + ["--recipes", f"fp32,{recipe}", "--steps", "30", "--lr", "1e-2", "--eval-every", "10",
                             "--data", corpus, "--out", str(out)], capsys)
    if rc != 0 and "not implemented" in cap.err:
        pytest.skip(cap.err.strip())
    assert rc == 0, cap.err
    _loss_drops(out / recipe)
    # the FP4 run differs from fp32 (it is quantized) but starts from the same initialization
    a, b = read_metrics(out / "fp32" / "metrics.csv"), read_metrics(out / recipe / "metrics.csv")
    assert a[0]["val_loss"] != b[1]["train_loss"]
    assert abs(a[0]["val_loss"] - b[0]["val_loss"]) < 0.05
    assert a[-1]["train_loss"] != b[-1]["train_loss"]
    assert f"| {recipe} |" in cap.out


def test_resume_reproduces_the_uninterrupted_run(tmp_path, corpus, capsys):
    recipes = "fp32,wang2025" if _has_fp4_torch() else "fp32"
    common = TINY + ["--recipes", recipes, "--steps", "12", "--eval-every", "4", "--checkpoint-every", "5",
                     "--data", corpus]
    rc, cap = _train(common + ["--out", str(tmp_path / "a")], capsys)
    assert rc == 0, cap.err
    b = tmp_path / "b"
    # interrupted inside the second recipe's first turn (or, fp32 only, inside the first), between checkpoints
    stop = INTERLEAVE_STEPS + 7 if "," in recipes else 7
    rc, cap = _train(common + ["--out", str(b), "--stop-after", str(stop)], capsys)
    assert rc == 130
    assert f"fp4swift train --resume --out {b}" in cap.err
    assert not (b / "summary.md").exists()
    last = recipes.split(",")[-1]
    rows = read_metrics(b / last / "metrics.csv")
    assert rows[-1]["step"] == 7  # the stop checkpoint holds exactly the steps done
    if "," in recipes:  # the recipe waiting for its next turn wrote its checkpoint too
        assert read_metrics(b / "fp32" / "metrics.csv")[-1]["step"] == INTERLEAVE_STEPS
    # a changed training flag is refused on resume
    rc, cap = _train(["--resume", "--out", str(b), "--steps", "13", "--no-progress"], capsys)
    assert rc == 2 and "--steps" in cap.err
    rc, cap = _train(["--resume", "--out", str(b), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    for r in recipes.split(","):
        assert _loss_columns(tmp_path / "a" / r / "metrics.csv") == _loss_columns(b / r / "metrics.csv"), r
    assert (b / "summary.md").is_file()
    # resuming a finished run changes nothing
    rc, cap = _train(["--resume", "--out", str(b), "--no-progress"], capsys)
    assert rc == 0 and "already finished" in cap.out


@pytest.mark.skipif(not _has_fp4_torch(), reason="needs fp4swift.torch")
def test_recipes_in_turns_give_the_numbers_of_a_recipe_alone(tmp_path, corpus, capsys):
    """The recipes train in turns of INTERLEAVE_STEPS steps; a recipe's losses must not depend on that."""
    common = TINY + ["--steps", str(2 * INTERLEAVE_STEPS + 3), "--eval-every", "5", "--data", corpus]
    rc, cap = _train(common + ["--recipes", "fp32,wang2025", "--out", str(tmp_path / "both")], capsys)
    assert rc == 0, cap.err
    rc, cap = _train(common + ["--recipes", "wang2025", "--out", str(tmp_path / "alone")], capsys)
    assert rc == 0, cap.err
    assert _loss_columns(tmp_path / "both" / "wang2025" / "metrics.csv") == \
        _loss_columns(tmp_path / "alone" / "wang2025" / "metrics.csv")


def test_ctrl_c_writes_a_checkpoint_and_resume_is_exact(tmp_path, corpus):
    """A real SIGINT to a real process: checkpoint, a message naming the resume command, exit 130."""
    steps = 200
    common = TINY + ["--recipes", "fp32", "--steps", str(steps), "--eval-every", "10", "--checkpoint-every", "1000",
                     "--data", corpus]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = tmp_path / "sig"
    p = subprocess.Popen([sys.executable, "-m", "fp4swift.cli", "train"] + common + ["--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:  # the "output:" line comes once the Ctrl-C handler is installed
        if line.startswith("output:"):
            break
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    so, se = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == 130, se
    assert "--resume --out" in se and "Traceback" not in se
    rows = read_metrics(out / "fp32" / "metrics.csv")  # empty if stopped before step 0's evaluation
    stopped = rows[-1]["step"] if rows else 0
    assert 0 <= stopped < steps
    rc = cli.main(["train", "--resume", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    rc = cli.main(["train"] + common + ["--out", str(tmp_path / "ref")])
    assert rc == 0
    assert _loss_columns(out / "fp32" / "metrics.csv") == _loss_columns(tmp_path / "ref" / "fp32" / "metrics.csv")


# ---------------------------------------------------------------------------------------
# bad input: one line on stderr, exit status 2, nothing written


def _bad_cases(tmp_path, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "nothing.txt").write_text("")
    (empty / "blob.bin").write_bytes(b"\x00\x01" * 100)
    small = tmp_path / "small.txt"
    small.write_text("print('hello')\n" * 4)
    return {
        "unknown recipe": (["--recipes", "fp32,fp5-magic", "--data", corpus], "fp5-magic"),
        "missing data": (["--data", str(tmp_path / "no" / "such")], "no such file"),
        "empty corpus": (["--data", str(empty)], "no non-empty text files"),
        "seq too long": (["--data", str(small), "--seq-len", "64"], "--seq-len 64"),
        "heads do not divide": (["--data", corpus, "--heads", "3"], "--heads"),
        "nothing to resume": (["--resume"], "nothing to resume"),
        "bad recipe override": (["--recipes", "wang2025:nosuchfield=1", "--data", corpus], "nosuchfield"),
        "steps and tokens": (["--data", corpus, "--tokens", "1000"], "either --steps or --tokens"),
        "tokens not positive": (["--data", corpus, "--tokens", "0"], "--tokens must be positive"),
        "switch_at out of range": (["--data", corpus, "--switch-at", "1.5"], "--switch-at"),
        "bad switch_at in a spec": (["--data", corpus, "--recipes", "zhou2025:switch_at=soon"], "switch_at"),
        "unknown switch target": (["--data", corpus, "--switch-at", "0.5", "--switch-to", "fp6"], "fp6"),
    }


@pytest.mark.parametrize("case", ["unknown recipe", "missing data", "empty corpus", "seq too long",
                                  "heads do not divide", "nothing to resume", "bad recipe override",
                                  "steps and tokens", "tokens not positive", "switch_at out of range",
                                  "bad switch_at in a spec", "unknown switch target"])
def test_bad_input_fails_cleanly(tmp_path, corpus, capsys, monkeypatch, case):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv, needle = _bad_cases(tmp_path, corpus)[case]
    steps = [] if case == "tokens not positive" else ["--steps", "3"]
    args = TINY + steps + argv if case != "nothing to resume" else argv
    rc, cap = _train(args, capsys)
    assert rc == 2
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fp4swift train: error:"), cap.err
    assert needle in lines[0]
    assert os.listdir(work) == []  # no runs/ directory, nothing half-written
    # with an explicit --out the directory is not created either
    if case != "nothing to resume":
        rc, cap = _train(args + ["--out", str(work / "out")], capsys)
        assert rc == 2 and not (work / "out").exists()


def test_a_finished_run_is_not_overwritten(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = TINY + ["--recipes", "fp32", "--steps", "3", "--data", corpus, "--out", str(out)]
    rc, cap = _train(args, capsys)
    assert rc == 0, cap.err
    before = (out / "fp32" / "metrics.csv").read_bytes()
    rc, cap = _train(args, capsys)
    assert rc == 2 and "already holds a run" in cap.err
    assert (out / "fp32" / "metrics.csv").read_bytes() == before


def test_recipe_ablation_override(tmp_path, corpus, capsys):
    pytest.importorskip("fp4swift.torch")
    out = tmp_path / "run"
    rc, cap = _train(TINY + ["--recipes", "wang2025,wang2025:dge=off", "--steps", "6", "--data", corpus,
                             "--out", str(out)], capsys)
    assert rc == 0, cap.err
    a = _loss_columns(out / "wang2025" / "metrics.csv")
    b = _loss_columns(out / "wang2025:dge=off" / "metrics.csv")
    assert a[:2] == b[:2]  # DGE changes the weight gradient only: same step-0 and step-1 loss
    assert a[-1] != b[-1]
    assert "| wang2025:dge=off |" in cap.out


def test_default_out_dir_and_latest_link(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "3", "--data", corpus], capsys)
    assert rc == 0, cap.err
    runs = sorted(p for p in os.listdir(tmp_path / "runs") if p != "latest")
    assert len(runs) == 1 and os.path.islink(tmp_path / "runs" / "latest")
    assert os.readlink(tmp_path / "runs" / "latest") == runs[0]
    assert (tmp_path / "runs" / "latest" / "fp32" / "metrics.csv").is_file()
    rc, cap = _train(["--resume", "--no-progress"], capsys)  # resumes runs/latest
    assert rc == 0 and "already finished" in cap.out


# ---------------------------------------------------------------------------------------
# fidelity


def test_fidelity_prints_table_1(tmp_path, corpus, capsys):
    rc = cli.main(["fidelity"] + TINY + ["--steps", "10", "--data", corpus])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    for label in ("no clamp", "clamp 0.999, no comp", "clamp+comp 0.999", "clamp+comp 0.99", "clamp+comp 0.97"):
        assert label in cap.out
    assert "92.19%" in cap.out and "20.88" in cap.out  # the paper's column
    assert "ordering matches the paper:" in cap.out
    assert "averaged over 7 linear layers" in cap.out  # q, k, v, o, gate, up, down of one block


def test_fidelity_from_a_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc, cap = _train(TINY + ["--recipes", "fp32", "--steps", "4", "--data", corpus, "--out", str(out)], capsys)
    assert rc == 0, cap.err
    rc = cli.main(["fidelity", "--checkpoint", str(out / "fp32" / "checkpoint.pt"), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "step 4" in cap.out and "clamp+comp 0.97" in cap.out
    rc = cli.main(["fidelity", "--checkpoint", str(tmp_path / "missing.pt")])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_table_rows_property():
    """Compensation with the full residual is at least as faithful as clamping alone, and clamping
    a heavy-tailed tensor with per-token scales beats no clamping (the paper's Table 1 ordering)."""
    from fp4swift.train.fidelity import table_rows

    rng = np.random.default_rng(7)
    x = rng.standard_t(3, size=(256, 64)).astype(np.float32)
    x[:, 5] *= 30.0
    m = table_rows(x)
    assert m["clamp+comp 0.999"]["snr_db"] > m["clamp 0.999, no comp"]["snr_db"]
    assert m["clamp+comp 0.97"]["snr_db"] > m["clamp+comp 0.999"]["snr_db"]
    assert m["clamp+comp 0.97"]["mse"] < m["no clamp"]["mse"]
    for r in m.values():
        assert -1.0 <= r["cosine"] <= 1.0 + 1e-6 and r["mse"] >= 0


def test_formats_subcommand_still_works(capsys):
    rc = cli.main(["formats", "--rows", "64", "--cols", "64"])
    assert rc == 0 and "e2m1" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# GPT-2-style model (--arch gpt2)


GPT2_LINEARS = {"c_attn", "c_proj", "c_fc", "lm_head"}


def test_gpt2_model_shapes_names_and_parameter_count():
    from fp4swift.train.model import GPT2LM, parameter_counts

    cfg = ModelConfig(arch="gpt2", d_model=32, layers=2, heads=2, seq_len=16)
    m = build_model(cfg, seed=3)
    assert isinstance(m, GPT2LM) and cfg.hidden == 4 * 32 and cfg.label == "GPT-2-style"
    assert m(torch.randint(0, 256, (3, 16))).shape == (3, 16, 256)
    assert m(torch.randint(0, 256, (2, 5))).shape == (2, 5, 256)  # shorter than seq_len: positions 0..4
    lin = {n: mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert {n.rsplit(".", 1)[-1] for n in lin} == GPT2_LINEARS
    assert all(type(mod) is torch.nn.Linear for mod in lin.values())  # not HF's Conv1D
    blk = m.transformer["h"][0]
    assert (blk.attn.c_attn.in_features, blk.attn.c_attn.out_features) == (32, 96)  # fused q, k, v
    assert (blk.mlp.c_fc.out_features, blk.mlp.c_proj.in_features) == (128, 128)
    assert isinstance(blk.ln_1, torch.nn.LayerNorm) and blk.ln_1.bias is not None
    assert blk.attn.c_attn.bias is not None and m.lm_head.bias is None
    assert "transformer.h.1.mlp.c_proj.weight" in m.state_dict()  # Hugging Face GPT-2 names
    d, h, t = 32, 128, 16
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    embeddings = 256 * d + t * d
    expected = embeddings + 2 * block + 2 * d + 256 * d
    assert count_parameters(m) == expected
    assert count_parameters(m, exclude_embeddings=True) == expected - embeddings
    assert parameter_counts(cfg) == {"total": expected, "non_embedding": expected - embeddings}
    tied = build_model(ModelConfig(arch="gpt2", d_model=32, layers=2, heads=2, seq_len=16, tie_embeddings=True), 3)
    assert tied.lm_head.weight is tied.transformer["wte"].weight
    assert count_parameters(tied) == expected - 256 * d
    # an odd head size is fine without rotary embeddings; --mlp-hidden overrides 4·d_model
    odd = build_model(ModelConfig(arch="gpt2", d_model=30, layers=1, heads=2, seq_len=8, mlp_hidden=40), 0)
    assert odd.transformer["h"][0].mlp.c_fc.out_features == 40
    with pytest.raises(ValueError, match="--arch"):
        build_model(ModelConfig(arch="gpt3", d_model=32, layers=1, heads=2, seq_len=8), 0)


def test_gpt2_is_causal_and_position_aware():
    m = build_model(ModelConfig(arch="gpt2", d_model=32, layers=2, heads=2, seq_len=16), seed=0).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 7) % 256
    with torch.no_grad():
        a, b = m(x), m(y)
        same = m(torch.full((1, 16), 65))
    assert torch.equal(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])
    assert not torch.allclose(same[0, 0], same[0, 5])  # learned positions: same byte, different logits


@pytest.mark.parametrize("init,near_uniform", [("normal", 0.1), ("torch", 0.3)])
def test_gpt2_loss_decreases(init, near_uniform):
    m = build_model(ModelConfig(arch="gpt2", d_model=32, layers=1, heads=2, seq_len=16, init=init), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 16), generator=g)
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = m.loss(x, y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert abs(losses[0] - math.log(256)) < near_uniform  # the initialization predicts ~uniform bytes
    assert losses[-1] < losses[0] - 1.0 and all(b < a for a, b in zip(losses[:5], losses[1:6])), losses


def test_convert_policy_on_the_gpt2_model():
    f4t = pytest.importorskip("fp4swift.torch")
    m = build_model(ModelConfig(arch="gpt2", d_model=32, layers=2, heads=2, seq_len=32), seed=0)
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = m(x)
    f4t.convert_(m, recipe="wang2025")
    conv = {n for n, mod in m.named_modules() if isinstance(mod, f4t.FP4Linear)}
    assert conv == {f"transformer.h.{i}.{n}" for i in range(2)
                    for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert type(m.lm_head) is torch.nn.Linear
    with torch.no_grad():
        got = m(x)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    assert not torch.equal(got, ref)  # quantized ...
    assert torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.9  # ... but close


def test_gpt2_training_end_to_end(tmp_path, corpus, capsys):
    recipes = "fp32,wang2025" if _has_fp4_torch() else "fp32"
    out = tmp_path / "run"
    rc, cap = _train(TINY + ["--arch", "gpt2", "--recipes", recipes, "--steps", "30", "--lr", "1e-2",
                             "--eval-every", "10", "--data", corpus, "--out", str(out)], capsys)
    assert rc == 0, cap.err
    for r in recipes.split(","):
        _loss_drops(out / r)
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "gpt2"
    assert "GPT-2-style" in cap.out and "LLaMA" not in cap.out
    assert "GPT-2-style" in (out / "summary.md").read_text()
    model = build_model(ModelConfig(arch="gpt2", d_model=32, layers=1, heads=2, seq_len=32), seed=0)
    meta = json.loads((out / "run.json").read_text())
    assert meta["arch"] == "gpt2"
    assert meta["parameters"] == {"total": count_parameters(model),
                                  "non_embedding": count_parameters(model, exclude_embeddings=True)}
    # the checkpoint is a GPT-2 model: fidelity loads it and finds its 4 linear layers
    rc = cli.main(["fidelity", "--checkpoint", str(out / "fp32" / "checkpoint.pt"), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "GPT-2-style" in cap.out and "averaged over 4 linear layers" in cap.out


def test_fidelity_with_arch_gpt2(corpus, capsys):
    rc = cli.main(["fidelity"] + TINY + ["--arch", "gpt2", "--steps", "3", "--data", corpus])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "GPT-2-style" in cap.out and "averaged over 4 linear layers" in cap.out


# ---------------------------------------------------------------------------------------
# token budget and run metadata (for scaling-law fits)


def test_token_budget_sets_steps_and_is_recorded(tmp_path, corpus, capsys):
    import json

    out = tmp_path / "run"
    rc, cap = _train(TINY + ["--recipes", "fp32", "--tokens", "1000", "--eval-every", "4", "--data", corpus,
                             "--out", str(out)], capsys)
    assert rc == 0, cap.err
    per_step = 4 * 32
    steps = math.ceil(1000 / per_step)  # 8
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps"] == steps and cfg["tokens"] == 1000
    rows = read_metrics(out / "fp32" / "metrics.csv")
    assert rows[-1]["step"] == steps and rows[-1]["val_loss"] is not None
    model = build_model(ModelConfig(d_model=32, layers=1, heads=2, seq_len=32), seed=0)
    n_total, n_ne = count_parameters(model), count_parameters(model, exclude_embeddings=True)
    assert n_ne == n_total - 256 * 32
    meta = json.loads((out / "run.json").read_text())
    assert meta["parameters"] == {"total": n_total, "non_embedding": n_ne}
    assert meta["arch"] == "llama" and meta["tokens_budget"] == 1000 and meta["tokens_per_step"] == per_step
    assert meta["recipes"]["fp32"]["tokens"] == steps * per_step and meta["recipes"]["fp32"]["status"] == "ok"
    assert meta["recipes"]["fp32"]["final_val_loss"] == rows[-1]["val_loss"]
    with open(out / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert int(summary[0]["params"]) == n_total and int(summary[0]["non_embedding_params"]) == n_ne
    assert int(summary[0]["tokens"]) == steps * per_step
    # resume: the stored budget is kept; the same --tokens is no change, another one is refused
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0 and "already finished" in cap.out
    rc, cap = _train(["--resume", "--out", str(out), "--tokens", "1000", "--no-progress"], capsys)
    assert rc == 0, cap.err
    rc, cap = _train(["--resume", "--out", str(out), "--tokens", "2000", "--no-progress"], capsys)
    assert rc == 2 and "--steps" in cap.err and "--tokens" in cap.err


def test_old_config_without_arch_resumes_as_llama(tmp_path, corpus, capsys):
    """A run written before --arch/--tokens existed (no such keys in config.json nor in its
    checkpoints) resumes as the LLaMA-style model it was."""
    import json

    out = tmp_path / "old"
    common = TINY + ["--recipes", "fp32", "--steps", "6", "--eval-every", "3", "--data", corpus]
    rc, cap = _train(common + ["--out", str(out), "--stop-after", "4"], capsys)
    assert rc == 130
    cfg = json.loads((out / "config.json").read_text())
    for k in ("arch", "tokens"):
        del cfg[k]
    (out / "config.json").write_text(json.dumps(cfg))
    ck_path = out / "fp32" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    for k in ("arch", "tokens"):
        del ck["config"][k]
    torch.save(ck, ck_path)
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    assert "LLaMA-style" in cap.out
    rc, cap = _train(common + ["--out", str(tmp_path / "ref")], capsys)
    assert rc == 0, cap.err
    assert _loss_columns(out / "fp32" / "metrics.csv") == _loss_columns(tmp_path / "ref" / "fp32" / "metrics.csv")


# ---------------------------------------------------------------------------------------
# target-precision schedule (Zhou et al., numerics.md §7)


@pytest.mark.skipif(not _has_fp4_torch(), reason="needs fp4swift.torch")
def test_precision_schedule_in_train(tmp_path, corpus, capsys):
    """--switch-at applies to every quantized recipe, a spec's own switch_at overrides it (off
    opts out): the metrics' `switched` column flips exactly at round(p·steps), the summary and
    run.json name the switch, and a resume across the switch equals the uninterrupted run."""
    common = TINY + ["--recipes", "fp32,zhou2025,zhou2025:switch_at=off,wang2025:switch_at=0.25:switch_to=fp32",
                     "--steps", "12", "--eval-every", "4", "--checkpoint-every", "5", "--switch-at", "0.5",
                     "--data", corpus]
    out = tmp_path / "a"
    rc, cap = _train(common + ["--out", str(out)], capsys)
    assert rc == 0, cap.err
    assert "[zhou2025] step 6: switched every quantized layer to fp8" in cap.out + cap.err
    flags = {r: [row["switched"] for row in read_metrics(out / r / "metrics.csv")[1:]]
             for r in ("fp32", "zhou2025", "zhou2025:switch_at=off", "wang2025:switch_at=0.25:switch_to=fp32")}
    assert flags["fp32"] == [None] * 12 and flags["zhou2025:switch_at=off"] == [None] * 12
    assert flags["zhou2025"] == [0] * 6 + [1] * 6  # row k is step k-1's result: steps 6..11 ran in fp8
    assert flags["wang2025:switch_at=0.25:switch_to=fp32"] == [0] * 3 + [1] * 9
    meta = json.loads((out / "run.json").read_text())["recipes"]
    assert meta["zhou2025"]["switch"] == {"step": 6, "to": "fp8"}
    assert meta["zhou2025:switch_at=off"]["switch"] is None
    summary = (out / "summary.md").read_text()
    assert "ok; fp8 from step 6" in summary and "ok; fp32 from step 3" in summary
    # interrupted before the switch, resumed after it: identical numbers
    b = tmp_path / "b"
    rc, cap = _train(common + ["--out", str(b), "--stop-after", str(12 + 4)], capsys)
    assert rc == 130
    rc, cap = _train(["--resume", "--out", str(b), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    for r in flags:
        assert _loss_columns(out / r / "metrics.csv") == _loss_columns(b / r / "metrics.csv"), r
