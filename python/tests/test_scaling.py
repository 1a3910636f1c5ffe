"""`fp4swift scaling-law` on synthetic runs whose losses come from known scaling-law parameters.

The fake run directories look like `fp4swift train` output (config.json, run.json and
<recipe>/metrics.csv), so the reader, the fit and the command are tested end to end without
training anything; one test reads a run without run.json (needs torch for the parameter count).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")

from fp4swift import cli  # noqa: E402
from fp4swift.train import scaling  # noqa: E402
from fp4swift.train.scaling import Point, ScalingError, collect_points, fit, predict  # noqa: E402

#: The generating law: A, α, B, β, γ, E, and the "quantized" recipe's efficiencies (Quartet's).
TRUE = {"A": 60.0, "alpha": 0.35, "B": 300.0, "beta": 0.4, "gamma": 0.9, "E": 1.1}
TRUE_EFF = {"fp32": (1.0, 1.0), "quartet": (0.64, 0.94)}
SIZES = (2e4, 5e4, 1.2e5, 3e5)
BUDGETS = (1e5, 3e5, 1e6, 3e6)
NOISE = 1e-3      # multiplicative noise on every loss (log-normal sigma)
TOLERANCE = 0.05  # relative error allowed on the recovered effN, effD
TOKENS_PER_STEP = 1000


def _write_run(root, name: str, n: float, d: float, losses: dict, steps_done: dict = None, run_json: bool = True,
               config: dict = None) -> str:
    """A run directory as `fp4swift train` leaves it: losses {recipe: final val loss}."""
    run = root / name
    run.mkdir(parents=True)
    steps = int(d // TOKENS_PER_STEP)
    cfg = dict(recipes=list(losses), arch="llama", d_model=32, layers=1, heads=2, seq_len=100, mlp_hidden=0,
               tie_embeddings=False, batch_size=TOKENS_PER_STEP // 100, steps=steps, seed=0, tokens=None)
    cfg.update(config or {})
    (run / "config.json").write_text(json.dumps(cfg))
    if run_json:
        (run / "run.json").write_text(json.dumps({"arch": "llama", "parameters": {"total": int(n) + 99,
                                                                                  "non_embedding": int(n)}}))
    for recipe, loss in losses.items():
        (run / recipe).mkdir()
        last = (steps_done or {}).get(recipe, steps)
        with open(run / recipe / "metrics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "train_loss", "val_loss", "tokens_per_s", "elapsed_s"])
            w.writerow([0, "", 5.55, "", 0.0])
            w.writerow([last // 2, 5.0, "", 1000.0, 1.0])
            w.writerow([last, 4.0, "" if loss is None else repr(loss), 1000.0, 2.0])
    return str(run)


def _true_loss(recipe: str, n: float, d: float) -> float:
    en, ed = TRUE_EFF[recipe]
    return float(predict(n, d, TRUE, en, ed))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """16 runs (4 sizes x 4 budgets), each with fp32 and quartet, noisy losses from TRUE."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(1)
    for i, (n, d) in enumerate(itertools.product(SIZES, BUDGETS)):
        losses = {r: _true_loss(r, n, d) * float(np.exp(rng.normal(0, NOISE))) for r in ("fp32", "quartet")}
        _write_run(root, f"run{i:02d}", n, d, losses)
    return root


@pytest.fixture(scope="module")
def fitted(sweep):
    points, notes, runs = collect_points([str(sweep)])
    return fit(points), points, notes, runs


def test_predict_is_the_law():
    rng = np.random.default_rng(0)
    n, d = rng.uniform(1e3, 1e7, 50), rng.uniform(1e4, 1e9, 50)
    p = {"A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28, "gamma": 1.3, "E": 1.7}
    en, ed = 0.6, 0.9
    direct = (p["A"] / (n * en) ** p["alpha"] + p["B"] / (d * ed) ** p["beta"]) ** p["gamma"] + p["E"]
    np.testing.assert_allclose(predict(n, d, p, en, ed), direct, rtol=1e-12)


def test_analytic_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    ln_n, ln_d = np.log(rng.uniform(1e4, 1e6, 12)), np.log(rng.uniform(1e5, 1e7, 12))
    theta = np.array([4.0, 0.4, 5.5, 0.35, 0.8, 0.1])
    ln_l = scaling._log_pred(ln_n, ln_d, theta)[0] + rng.normal(0, 0.05, 12)  # residuals on both Huber branches
    for delta in (1e-3, 10.0):
        f = lambda t: scaling._base_objective(t, ln_n, ln_d, ln_l, delta)  # noqa: E731
        g = f(theta)[1]
        h = 1e-6
        num = np.array([(f(theta + h * e)[0] - f(theta - h * e)[0]) / (2 * h) for e in np.eye(6)])
        np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-6)
        fe = lambda x: scaling._eff_objective(x, theta, ln_n, ln_d, ln_l, delta)  # noqa: E731
        x = np.array([-0.3, -0.1])
        num = np.array([(fe(x + h * e)[0] - fe(x - h * e)[0]) / (2 * h) for e in np.eye(2)])
        np.testing.assert_allclose(fe(x)[1], num, rtol=1e-4, atol=1e-6)


def test_points_are_read_from_runs(fitted, sweep):
    f, points, notes, runs = fitted
    assert runs == 16 and notes == []
    assert len(points) == 32 and {p.recipe for p in points} == {"fp32", "quartet"}
    assert {p.n for p in points} == set(SIZES) and {p.d for p in points} == set(BUDGETS)
    p = next(p for p in points if p.recipe == "quartet" and p.n == SIZES[0] and p.d == BUDGETS[0])
    assert abs(p.loss / _true_loss("quartet", p.n, p.d) - 1) < 5 * NOISE


def test_fit_recovers_the_quantized_recipes_efficiencies(fitted):
    f = fitted[0]
    q = next(r for r in f.recipes if r.recipe == "quartet")
    assert q.points == 16 and not q.at_bound
    assert abs(q.eff_n / TRUE_EFF["quartet"][0] - 1) < TOLERANCE, q
    assert abs(q.eff_d / TRUE_EFF["quartet"][1] - 1) < TOLERANCE, q
    # the base surface reproduces the fp32 losses to about the noise level, and so does the recipe's fit
    assert f.base.rms_log_residual < 3 * NOISE and q.rms_log_residual < 3 * NOISE
    n, d = np.meshgrid(SIZES, BUDGETS)
    np.testing.assert_allclose(predict(n, d, f.params), predict(n, d, TRUE), rtol=3 * NOISE)
    assert f.base.eff_n == f.base.eff_d == 1.0 and f.starts >= 50


def test_fit_of_an_unquantized_recipe_gives_efficiency_one(fitted):
    """fp32 points relabelled as another recipe get effN = effD = 1 back (the base is frozen)."""
    f, points = fitted[0], fitted[1]
    twin = [Point("fp32-again", p.n, p.d, p.loss, p.run) for p in points if p.recipe == "fp32"]
    en, ed, res, _ = scaling.fit_efficiency(f.params, np.array([p.n for p in twin]), np.array([p.d for p in twin]),
                                            np.array([p.loss for p in twin]))
    assert abs(en - 1) < 0.02 and abs(ed - 1) < 0.02
    assert res == pytest.approx(f.base.rms_log_residual, rel=0.05)


def test_cli_end_to_end(sweep, tmp_path, capsys):
    out = tmp_path / "fit"
    rc = cli.main(["scaling-law", str(sweep), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "32 points from 16 runs" in cap.out
    rows = {ln.split()[0]: ln.split() for ln in cap.out.splitlines() if ln.startswith(("fp32 ", "quartet "))}
    assert rows["fp32"][1] == "16" and "(fixed)" in cap.out
    assert abs(float(rows["quartet"][2]) - 0.64) < 0.64 * TOLERANCE
    assert abs(float(rows["quartet"][3]) - 0.94) < 0.94 * TOLERANCE
    js = json.loads((out / "scaling_fit.json").read_text())
    assert js["base_recipe"] == "fp32" and set(js["params"]) == set(scaling.PARAM_NAMES)
    assert js["recipes"]["quartet"]["eff_n"] == pytest.approx(float(rows["quartet"][2]), abs=6e-4)
    assert len(js["points"]) == 32
    assert all(abs(p["fitted_loss"] / p["loss"] - 1) < 5 * NOISE for p in js["points"])
    with open(out / "scaling_fit.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["recipe"] for r in table] == ["fp32", "quartet"] and float(table[0]["eff_n"]) == 1.0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in cap.out
    else:
        assert (out / "scaling_law.png").stat().st_size > 10_000
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_unfinished_and_diverged_recipes_are_skipped(tmp_path):
    root = tmp_path / "runs"
    _write_run(root, "a", 2e4, 1e5, {"fp32": 4.0, "quartet": 4.2}, steps_done={"quartet": 50})
    _write_run(root, "b", 2e4, 1e5, {"fp32": 4.0, "quartet": float("nan")})
    _write_run(root, "c", 2e4, 1e5, {"fp32": 4.0, "quartet": None})
    (root / "c" / "fp32" / "metrics.csv").unlink()
    points, notes, runs = collect_points([str(root)])
    assert runs == 3 and [p.recipe for p in points] == ["fp32", "fp32"]
    assert any("unfinished (step 50 of 100)" in n for n in notes)
    assert any("no finite final validation loss" in n for n in notes)
    assert any("fp32 not started" in n for n in notes)


def test_a_run_without_run_json_gets_its_parameter_count_from_the_config(tmp_path):
    pytest.importorskip("torch")
    from fp4swift.train.model import ModelConfig, build_model, count_parameters

    for arch in ("llama", "gpt2"):
        run = _write_run(tmp_path / arch, "r", 0, 1e5, {"fp32": 4.0}, run_json=False,
                         config={"arch": arch, "d_model": 64, "layers": 2, "heads": 4, "seq_len": 100})
        points, _ = scaling.read_run(run)
        m = build_model(ModelConfig(arch=arch, d_model=64, layers=2, heads=4, seq_len=100), 0)
        assert points[0].n == count_parameters(m, exclude_embeddings=True) and points[0].arch == arch


# ---------------------------------------------------------------------------------------
# errors: one line on stderr, exit status 2


def _grid(root, recipes=("fp32",), sizes=SIZES[:3], budgets=BUDGETS[:3]):
    for i, (n, d) in enumerate(itertools.product(sizes, budgets)):
        _write_run(root, f"r{i}", n, d, {r: _true_loss("fp32", n, d) for r in recipes})
    return str(root)


def _error_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    _write_run(broken, "r", 2e4, 1e5, {"fp32": 4.0})
    (broken / "r" / "config.json").write_text("{not json")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    return {
        "no runs": ([str(empty)], "no runs found"),
        "missing dir": ([str(tmp_path / "nope")], "no such directory"),
        "not a dir": ([str(a_file)], "is not a directory"),
        "unreadable config": ([str(broken)], "cannot read"),
        "no fp32": ([_grid(tmp_path / "q", recipes=("quartet",))], "no finished fp32 runs"),
        "too few fp32": ([_grid(tmp_path / "few", sizes=SIZES[:2], budgets=BUDGETS[:2])], "at least 6 fp32 points"),
        "one size": ([_grid(tmp_path / "one", sizes=SIZES[:1], budgets=np.geomspace(1e5, 3e6, 6))],
                     "at least 2 model sizes"),
        "unknown recipe": ([_grid(tmp_path / "g"), "--recipes", "mxfp4"], "no finished runs of mxfp4"),
        "bad delta": ([_grid(tmp_path / "h"), "--huber-delta", "0"], "--huber-delta"),
    }


@pytest.mark.parametrize("case", ["no runs", "missing dir", "not a dir", "unreadable config", "no fp32",
                                  "too few fp32", "one size", "unknown recipe", "bad delta"])
def test_errors_are_one_line(tmp_path, capsys, case):
    argv, needle = _error_cases(tmp_path)[case]
    out = tmp_path / "out"
    rc = cli.main(["scaling-law"] + argv + ["--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("fp4swift scaling-law: error:"), err
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_missing_scipy_is_a_clear_error(tmp_path, capsys, monkeypatch):
    root = _grid(tmp_path / "g")
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # import scipy.optimize raises ImportError
    rc = cli.main(["scaling-law", root])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install scipy" in err and len(err.strip().splitlines()) == 1
