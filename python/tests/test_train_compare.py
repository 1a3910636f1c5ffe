"""Recipes compared over seeds and learning rates (`fp4swift train --seeds N --lr a,b`):
the statistics against hand-computed values, the verdict, the sweep's choice, the layout and
resume of multi-trial runs, and their bad input."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from fp4swift.train.compare import Comparison, SeedStats, paired_gap, t_quantile, verdict
from fp4swift.train.trials import Trial, all_trials, trial_dir

torch = pytest.importorskip("torch")

from fp4swift import cli  # noqa: E402
from fp4swift.train.config import TrainConfig  # noqa: E402
from fp4swift.train.outputs import RecipeResult, read_metrics, summarize  # noqa: E402

TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "4",
        "--no-progress", "--threads", "1", "--eval-every", "5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    rng = np.random.default_rng(3)
    words = ["def", "return", "self", "x", "=", "+", "1", "(", ")", ":", "for", "in", "range", "print"]
    p = tmp_path_factory.mktemp("cmp") / "text.py"
    p.write_text("\n".join(" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(900)) + "\n")
    return str(p)


def _train(argv, capsys):
    rc = cli.main(["train"] + list(argv))
    return rc, capsys.readouterr()


def _rows(val: float, steps: int = 10):
    return [{"step": 0, "val_loss": val + 1.0}, {"step": steps, "train_loss": val, "val_loss": val}]


# --- statistics against hand-computed numbers ---------------------------------------------

def test_seed_statistics_and_paired_gap_match_a_hand_computation():
    ref = SeedStats({0: 2.0, 1: 2.2, 2: 2.1})
    rec = SeedStats({0: 1.9, 1: 2.2, 2: 2.0})
    assert ref.mean == pytest.approx(2.1) and ref.std == pytest.approx(0.1)
    assert (ref.low, ref.high) == (2.0, 2.2)
    gap = paired_gap(rec, ref)
    d = [(1.9 - 2.0) / 2.0 * 100, 0.0, (2.0 - 2.1) / 2.1 * 100]
    m = sum(d) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    assert gap.mean == pytest.approx(m)
    assert gap.half_width == pytest.approx(4.303 * sd / math.sqrt(3))  # t_{0.975, 2}
    assert gap.per_seed[1] == 0.0
    assert t_quantile(1) == 12.706 and t_quantile(1000) == 1.96 and t_quantile(22) == 2.086


def test_one_seed_has_no_interval_and_no_verdict():
    one, ref = SeedStats({0: 1.0}), SeedStats({0: 2.0})
    assert one.std == 0.0
    assert math.isnan(paired_gap(one, ref).half_width)
    assert verdict(one, ref) == "one seed: no noise estimate"


def test_verdict_says_within_noise_when_seed_ranges_overlap():
    ref = SeedStats({0: 2.00, 1: 2.10, 2: 2.05})
    assert verdict(SeedStats({0: 2.09, 1: 2.20, 2: 2.15}), ref) == "within noise"      # 2.09 < 2.10: overlap
    assert verdict(SeedStats({0: 1.90, 1: 1.99, 2: 1.95}), ref) == "lower than fp32 beyond the seed spread"
    assert verdict(SeedStats({0: 2.11, 1: 2.30, 2: 2.2}), ref) == "higher than fp32 beyond the seed spread"
    assert verdict(SeedStats({0: 2.11, 1: math.nan}), ref).startswith("no verdict")
    # ranges apart, but two seeds whose paired gaps disagree: the interval includes 0
    assert verdict(SeedStats({0: 1.99, 1: 1.80}), SeedStats({0: 2.00, 1: 2.10})).startswith(
        "within noise (the seed ranges separate, but the 95% interval includes 0")


def test_sweep_picks_the_lowest_mean_and_skips_rates_where_a_seed_diverged():
    finals = {("fp32", 1e-3, 0): 2.0, ("fp32", 1e-3, 1): 2.2,      # mean 2.1
              ("fp32", 2e-3, 0): 1.9, ("fp32", 2e-3, 1): 2.1,      # mean 2.0: best
              ("fp32", 4e-3, 0): 1.5, ("fp32", 4e-3, 1): math.nan,  # lowest seed, but a seed diverged
              ("x", 1e-3, 0): 1.8, ("x", 1e-3, 1): 1.8, ("x", 2e-3, 0): 1.9, ("x", 2e-3, 1): 1.9}
    cmp = Comparison(["fp32", "x"], [1e-3, 2e-3, 4e-3], [0, 1], finals)
    assert cmp.best_lr("fp32") == 2e-3
    assert cmp.best_lr("x") == 1e-3   # its 4e-3 trials are missing: not eligible
    assert cmp.shared_lr() == 2e-3
    best = {r["recipe"]: r for r in cmp.rows("best_lr")}
    shared = {r["recipe"]: r for r in cmp.rows("shared_lr")}
    assert best["x"]["lr"] == 1e-3 and shared["x"]["lr"] == 2e-3
    assert best["x"]["gap"].per_seed == pytest.approx({0: (1.8 - 1.9) / 1.9 * 100, 1: (1.8 - 2.1) / 2.1 * 100})
    ties = Comparison(["a"], [1e-3, 2e-3], [0], {("a", 1e-3, 0): 2.0, ("a", 2e-3, 0): 2.0})
    assert ties.best_lr("a") == 1e-3  # a tie goes to the first rate given
    # runs read together may hold a rate for fewer seeds: its mean is over the seeds it has
    part = Comparison(["a"], [1e-3, 2e-3], [0, 1], {("a", 1e-3, 0): 2.0, ("a", 2e-3, 0): 2.2, ("a", 2e-3, 1): 2.4})
    assert part.stats[("a", 1e-3)].n == 1 and part.best_lr("a") == 1e-3


def test_summary_tables_from_hand_made_results():
    cfg = TrainConfig(recipes=["fp32", "a", "b"], lr=[1e-3, 2e-3], seeds=3, steps=10)
    vals = {("fp32", 1e-3): [2.0, 2.1, 2.05], ("fp32", 2e-3): [2.2, 2.3, 2.25],
            ("a", 1e-3): [2.5, 2.6, 2.55], ("a", 2e-3): [1.8, 1.9, 1.85],
            ("b", 1e-3): [2.02, 2.12, 2.07], ("b", 2e-3): [3.0, 3.1, 3.05]}
    results = [RecipeResult(r, _rows(v), 1.0, 100, lr=lr, seed=s)
               for (r, lr), vs in vals.items() for s, v in enumerate(vs)]
    cmp, md = summarize(results, cfg)
    assert [cmp.best_lr(r) for r in ("fp32", "a", "b")] == [1e-3, 2e-3, 1e-3]
    assert "| fp32 | **2.0500 ± 0.0500** | 2.2500 ± 0.0500 | 0.001 |" in md
    assert "a lower than fp32 beyond the seed spread" in md
    assert "b within noise" in md
    assert "Every recipe at fp32's best learning rate (0.001)" in md


# --- runs ---------------------------------------------------------------------------------

def test_trial_layout_and_a_multi_seed_trial_equals_the_single_seed_run(tmp_path, corpus, capsys):
    common = TINY + ["--recipes", "fp32,wang2025", "--steps", "10", "--data", corpus]
    rc, cap = _train(common + ["--seeds", "2", "--seed", "3", "--lr", "2e-3,5e-3", "--out", str(tmp_path / "m")],
                     capsys)
    assert rc == 0, cap.err
    for t in all_trials(["fp32", "wang2025"], [2e-3, 5e-3], [3, 4]):
        assert (tmp_path / "m" / trial_dir(t, 2, 2) / "checkpoint.pt").is_file()
    assert trial_dir(Trial("wang2025", 5e-3, 4), 2, 2) == "wang2025/lr0.005/seed4"
    rc, cap = _train(common + ["--seed", "4", "--lr", "5e-3", "--out", str(tmp_path / "s")], capsys)
    assert rc == 0, cap.err
    for recipe in ("fp32", "wang2025"):
        a = read_metrics(str(tmp_path / "m" / recipe / "lr0.005" / "seed4" / "metrics.csv"))
        b = read_metrics(str(tmp_path / "s" / recipe / "metrics.csv"))
        assert [(r["train_loss"], r["val_loss"]) for r in a] == [(r["train_loss"], r["val_loss"]) for r in b]
    with open(tmp_path / "m" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {(r["recipe"], float(r["lr"]), int(r["seed"])) for r in rows} == \
        {(t.recipe, t.lr, t.seed) for t in all_trials(["fp32", "wang2025"], [2e-3, 5e-3], [3, 4])}
    with open(tmp_path / "m" / "comparison.csv") as fh:
        comp = list(csv.DictReader(fh))
    assert {(r["recipe"], r["basis"]) for r in comp} == {(r, b) for r in ("fp32", "wang2025")
                                                          for b in ("best_lr", "shared_lr")}
    meta = json.loads((tmp_path / "m" / "run.json").read_text())
    assert len(meta["trials"]) == 8 and meta["seeds"] == [3, 4] and meta["learning_rates"] == [2e-3, 5e-3]
    w = meta["recipes"]["wang2025"]
    per = [float(v) for v in w["final_val_loss_per_seed"].values()]
    assert w["final_val_loss"] == pytest.approx(sum(per) / 2)
    assert "Verdict over 2 seeds" in (tmp_path / "m" / "summary.md").read_text()
    from fp4swift.train.scaling import read_run

    points, notes = read_run(str(tmp_path / "m"))  # each seed at the recipe's best rate
    best = {r: meta["recipes"][r]["lr"] for r in ("fp32", "wang2025")}
    assert sorted((p.recipe, p.loss) for p in points) == sorted(
        (r["recipe"], float(r["final_val_loss"])) for r in rows if float(r["lr"]) == best[r["recipe"]])
    assert any("at its best learning rate" in n for n in notes)


def test_resume_of_a_multi_seed_run_equals_the_uninterrupted_run(tmp_path, corpus, capsys):
    common = TINY + ["--recipes", "fp32,fp4-direct", "--steps", "20", "--seeds", "2", "--lr", "2e-3,4e-3",
                     "--data", corpus]
    rc, cap = _train(common + ["--out", str(tmp_path / "a")], capsys)
    assert rc == 0, cap.err
    rc, cap = _train(common + ["--out", str(tmp_path / "b"), "--stop-after", "37"], capsys)
    assert rc == 130, cap.err
    rc, cap = _train(["--resume", "--out", str(tmp_path / "b"), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    for t in all_trials(["fp32", "fp4-direct"], [2e-3, 4e-3], [0, 1]):
        d = trial_dir(t, 2, 2)
        a = read_metrics(str(tmp_path / "a" / d / "metrics.csv"))
        b = read_metrics(str(tmp_path / "b" / d / "metrics.csv"))
        assert [(r["train_loss"], r["val_loss"]) for r in a] == [(r["train_loss"], r["val_loss"]) for r in b], d
    assert (tmp_path / "a" / "comparison.csv").read_text() == (tmp_path / "b" / "comparison.csv").read_text()


def test_a_checkpoint_in_another_trials_folder_is_refused_on_resume(tmp_path, corpus, capsys):
    out = tmp_path / "r"
    common = TINY + ["--recipes", "fp32", "--steps", "10", "--seeds", "2", "--lr", "2e-3", "--data", corpus,
                     "--out", str(out)]
    rc, cap = _train(common + ["--stop-after", "12"], capsys)
    assert rc == 130
    a, b = out / "fp32" / "seed0" / "checkpoint.pt", out / "fp32" / "seed1" / "checkpoint.pt"
    b.write_bytes(a.read_bytes())
    rc, cap = _train(["--resume", "--out", str(out), "--no-progress"], capsys)
    assert rc == 2
    assert "from seed 0, not lr 0.002 from seed 1" in cap.err and len(cap.err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,expected", [
    (["--seeds", "0"], "--seeds must be at least 1, got 0"),
    (["--seeds", "-2"], "--seeds must be at least 1, got -2"),
    (["--lr", ""], "--lr is empty"),
    (["--lr", " , "], "--lr is empty"),
    (["--lr", "1e-3,1e-3"], "--lr names a learning rate twice: 0.001,0.001"),
    (["--lr", "1e-3,abc"], "--lr takes numbers separated by commas, got '1e-3,abc'"),
    (["--lr", "1e-3,-1"], "--lr must be positive numbers, got -1"),
    (["--lr", "nan"], "--lr must be positive numbers, got nan"),
    (["--study", "nope"], "--study must be one of wang2025-ablation"),
    (["--init", "xavier"], "--init must be normal or torch, or linear=RULE,embedding=RULE"),
    (["--init", "linear=torch"], "--init 'linear=torch' must give both linear= and embedding="),
    (["--study", "dge", "--recipes", "fp32"], "give either --study or --recipes, not both"),
])
def test_bad_seeds_and_learning_rates_give_one_line(tmp_path, corpus, capsys, flags, expected):
    rc, cap = _train(TINY + ["--steps", "5", "--data", corpus, "--out", str(tmp_path / "x")] + flags, capsys)
    assert rc == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], cap.err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("study", ["wang2025-ablation", "wang2025-formats", "block-recipes", "dge"])
def test_every_study_names_valid_recipes(study):
    from fp4swift.train.config import STUDIES, config_from_args
    from fp4swift.train.recipes import check_recipes

    class Args:
        pass

    a = Args()
    a.study = study
    cfg = config_from_args(a)
    assert cfg.recipes == list(STUDIES[study]) and cfg.recipes[0] == "fp32"
    check_recipes(cfg.recipes, cfg)  # raises RunError on an unknown recipe or field


def test_compare_reads_separate_one_seed_runs_as_one_multi_seed_run(tmp_path, corpus, capsys):
    common = TINY + ["--recipes", "fp32,fp4-direct", "--steps", "10", "--lr", "2e-3", "--data", corpus]
    assert _train(common + ["--seeds", "2", "--out", str(tmp_path / "both")], capsys)[0] == 0
    assert _train(common + ["--seed", "0", "--out", str(tmp_path / "s0")], capsys)[0] == 0
    assert _train(common + ["--seed", "1", "--out", str(tmp_path / "s1")], capsys)[0] == 0
    assert cli.main(["compare", str(tmp_path / "s1"), str(tmp_path / "s0")]) == 0
    merged = capsys.readouterr().out
    table = [ln for ln in (tmp_path / "both" / "summary.md").read_text().splitlines() if ln.startswith("| fp4-direct")]
    # the same losses, per-seed values, gap, interval and verdict (tokens/s are timings: cut them off)
    assert table and table[0].split("|")[1:7] == \
        next(ln for ln in merged.splitlines() if ln.startswith("| fp4-direct")).split("|")[1:7]
    # a trial in two runs, and runs whose models differ, are refused with one line
    assert cli.main(["compare", str(tmp_path / "s0"), str(tmp_path / "both")]) == 2
    assert "fp32 at lr 0.002 from seed 0 is in both" in capsys.readouterr().err
    assert _train(common + ["--seed", "2", "--steps", "12", "--out", str(tmp_path / "other")], capsys)[0] == 0
    assert cli.main(["compare", str(tmp_path / "s0"), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ in --steps" in err[0]


def test_init_rules_and_the_default_of_older_configs():
    from fp4swift.train.model import ModelConfig, build_model

    assert TrainConfig().init == "torch"
    assert TrainConfig.from_dict({"steps": 5}).init == "normal"  # config.json from before the field
    std = {}
    for init in ("normal", "torch", "linear=torch,embedding=normal", "linear=normal,embedding=torch"):
        m = dict(build_model(ModelConfig(d_model=64, layers=2, heads=2, init=init), 0).named_parameters())
        std[init] = (float(m["embed_tokens.weight"].std()), float(m["layers.0.mlp.up_proj.weight"].std()),
                     float(m["layers.1.self_attn.o_proj.weight"].std()))
    assert std["normal"] == pytest.approx((0.02, 0.02, 0.01), rel=0.05)   # o_proj: 0.02 / sqrt(2 * 2)
    assert std["torch"] == pytest.approx((1.0, 1 / math.sqrt(3 * 64), 1 / math.sqrt(3 * 64)), rel=0.05)
    assert std["linear=torch,embedding=normal"] == pytest.approx((0.02,) + std["torch"][1:], rel=0.05)
    assert std["linear=normal,embedding=torch"] == pytest.approx((1.0,) + std["normal"][1:], rel=0.05)


def test_grid_stats_of_known_weights():
    from fp4swift.train.gridstats import grid_position, weight_stats

    v = np.array([0.0, 0.25, 0.5, 1.25, 2.5, 3.0, 5.0, 6.0, -1.75, 7.0])
    assert grid_position(v) == pytest.approx([0, 0.5, 0, 0.5, 0.5, 0, 0.5, 1.0, 0.5, 1.0])
    # rows whose elements sit on e2m1 grid points (row max 6 -> scale 1): no quantization error
    on_grid = np.array([[6.0, -4.0, 3.0, 0.5, 0.0, -1.5], [3.0, 1.0, -0.75, 0.25, 0.0, 1.5]], np.float32)
    st = weight_stats(on_grid[:1] * 0.01, on_grid[:1] * 0.005, None, 1e-3)
    assert st["qerr"] == pytest.approx(0.0, abs=1e-6) and st["grid_dist"] == pytest.approx(0.0, abs=1e-5)
    assert st["near_grid"] == 1.0 and st["drift"] == pytest.approx(1.0)
    assert math.isnan(st["adam_step"])
    # the second row's scale is 3/6 = 0.5: -0.75 -> v = -1.5 (grid), 0.25 -> 0.5 (grid), 1.0 -> 2 (grid)
    st2 = weight_stats(on_grid[1:], on_grid[1:], {"exp_avg": np.full((1, 6), 0.1), "exp_avg_sq": np.full((1, 6), 0.01),
                                                 "step": 1.0}, 2e-3)
    assert st2["grid_dist"] == pytest.approx(0.0, abs=1e-6) and st2["drift"] == 0.0
    # AdamW's bias-corrected direction: (0.1 / 0.1) / (sqrt(0.01 / 0.05) + 1e-8)
    assert st2["adam_step"] == pytest.approx(1.0 / math.sqrt(0.2), rel=1e-6)


def test_grid_stats_command_on_a_run(tmp_path, corpus, capsys):
    out = tmp_path / "g"
    rc, cap = _train(TINY + ["--recipes", "fp32,wang2025", "--steps", "4", "--data", corpus, "--out", str(out)],
                     capsys)
    assert rc == 0, cap.err
    assert cli.main(["grid-stats", str(out), "--json", str(tmp_path / "g.json")]) == 0
    table = json.loads((tmp_path / "g.json").read_text())
    assert [r["trial"] for r in table] == ["fp32", "wang2025"]
    for r in table:
        assert 0 < r["qerr"] < 0.3 and 0 <= r["grid_dist"] <= 0.5 and 0 < r["drift"] < 1
    assert cli.main(["grid-stats", str(tmp_path / "nothing")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_run_from_before_seeds_and_init_resumes_as_it_was(tmp_path, corpus, capsys):
    """config.json without `init`/`seeds` and checkpoints without `trial` (runs written before
    those existed) resume with N(0, 0.02) and equal an uninterrupted --init normal run."""
    common = TINY + ["--recipes", "fp32,wang2025", "--steps", "10", "--data", corpus, "--init", "normal"]
    assert _train(common + ["--out", str(tmp_path / "a")], capsys)[0] == 0
    old = tmp_path / "old"
    assert _train(common + ["--out", str(old), "--stop-after", "13"], capsys)[0] == 130
    cfg = json.loads((old / "config.json").read_text())
    del cfg["init"], cfg["seeds"]
    (old / "config.json").write_text(json.dumps(cfg))
    for recipe in ("fp32", "wang2025"):
        p = old / recipe / "checkpoint.pt"
        ck = torch.load(p, weights_only=True)
        del ck["trial"]
        del ck["config"]["init"], ck["config"]["seeds"]
        torch.save(ck, p)
    rc, cap = _train(["--resume", "--out", str(old), "--no-progress", "--threads", "1"], capsys)
    assert rc == 0, cap.err
    for recipe in ("fp32", "wang2025"):
        a = read_metrics(str(tmp_path / "a" / recipe / "metrics.csv"))
        b = read_metrics(str(old / recipe / "metrics.csv"))
        assert [(r["train_loss"], r["val_loss"]) for r in a] == [(r["train_loss"], r["val_loss"]) for r in b]
