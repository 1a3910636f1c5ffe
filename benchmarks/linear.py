"""FP4 linear layer cost against the fp32 recipe (and torch nn.Linear), timed in one run.

    python benchmarks/linear.py [--tokens 2048 --in 1024 --out 4096] [--threads 2] [--repeats 5]
                                [--recipes fp32,quartet,mxfp4:gemm=simulated] [--gemm both] [--no-breakdown]

A recipe is a name, optionally with `:gemm=packed|simulated`; `--gemm both` times every
recipe both ways (GEMMs on packed codes, numerics.md §11, and sgemm on fake-quantized operands).

Targets, T=2048, K=1024, N=4096, 2 threads, forward+backward relative to the fp32 recipe:
- issue "real FP4 arithmetic" (gemm=packed): quartet <= 0.5x, mxfp4 <= 0.5x, nvfp4 <= 0.6x,
  wang2025 <= 0.8x;
- earlier (simulated): wang2025 <= 1.10x (quartet <= 1.5x);
- saved-for-backward bytes <= 0.2x a float32 copy of X;
- OCC thresholds on 2M values at least as fast as np.partition for the same two order statistics.
Also prints where the time goes (quantize X, quantize W, OCC, GEMMs, DGE, residual).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import interleaved_medians, median_seconds, print_table  # noqa: E402

import fp4swift as f4  # noqa: E402


def recipe_of(spec: str) -> "f4.Recipe":
    """A recipe name, optionally `name:gemm=packed|simulated`."""
    name, _, rest = spec.partition(":")
    r = f4.Recipe.get(name)
    for item in filter(None, rest.split(":")):
        key, _, value = item.partition("=")
        if key != "gemm":
            raise SystemExit(f"benchmarks/linear.py: only gemm= can be set on a recipe here, got {item!r}")
        r = r.replace(gemm=value)
    return r


def fwd_bwd(x, w, b, dy, recipe):
    y, saved = f4.linear_forward(x, w, b, recipe)
    return f4.linear_backward(dy, saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--in", dest="k", type=int, default=1024)
    ap.add_argument("--out", dest="n", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--recipes", default=None,
                    help="comma-separated recipes to time (fp32 is always included); default: all")
    ap.add_argument("--gemm", choices=["default", "both"], default="default",
                    help="both: time each quantized recipe with gemm=packed and gemm=simulated")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="only the recipe ratios: skip torch, the saved-state table, the wang2025 breakdown and OCC")
    args = ap.parse_args()
    f4.set_num_threads(args.threads)
    T, K, N = args.tokens, args.k, args.n
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, K), dtype=np.float32)
    x[:, rng.choice(K, K // 128, replace=False)] *= 10  # outlier channels, as in LLM activations
    w = (rng.standard_normal((N, K), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
    b = rng.standard_normal(N, dtype=np.float32)
    dy = rng.standard_normal((T, N), dtype=np.float32)
    reps = args.repeats

    names = f4.recipes() if args.recipes is None else ["fp32"] + [r for r in args.recipes.split(",") if r and r != "fp32"]
    if args.gemm == "both":
        names = [n for name in names for n in ([name] if name == "fp32" or ":" in name
                                               else [f"{name}:gemm=packed", f"{name}:gemm=simulated"])]
    recipes = {name: recipe_of(name) for name in names}
    fns = {name: (lambda r=r: fwd_bwd(x, w, b, dy, r)) for name, r in recipes.items()}
    medians = interleaved_medians(fns, reps)
    t_fp32 = medians["fp32"]
    targets = {"wang2025": "<= 0.8x", "quartet": "<= 0.5x", "mxfp4": "<= 0.5x", "nvfp4": "<= 0.6x"}
    rows = [(f"{name} recipe", f"{t / t_fp32:.2f}x",
             targets.get(name.split(":")[0], "") if recipes[name].gemm == "packed" else "")
            for name, t in medians.items()]
    if args.no_breakdown:
        print_table(f"forward+backward time relative to the fp32 recipe (T={T}, K={K}, N={N}, {args.threads} threads, "
                    f"median of {reps}, fp32 {t_fp32 * 1e3:.0f} ms)", ["layer", "time ratio", "target"], rows)
        return
    try:
        import torch

        torch.set_num_threads(args.threads)
        lin = torch.nn.Linear(K, N)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_step():
            lin.zero_grad(set_to_none=True)
            xt.grad = None
            lin(xt).backward(dyt)

        t_torch = median_seconds(torch_step, reps)
        rows.append(("torch nn.Linear", f"{t_torch / t_fp32:.2f}x", ""))
        rows.append(("wang2025 vs torch nn.Linear",
                     f"{median_seconds(lambda: fwd_bwd(x, w, b, dy, 'wang2025'), reps) / t_torch:.2f}x", ""))
    except ImportError:
        rows.append(("torch nn.Linear", "not installed", ""))
    print_table(f"forward+backward time relative to the fp32 recipe (T={T}, K={K}, N={N}, {args.threads} threads, "
                f"median of {reps})", ["layer", "time ratio", "target"], rows)

    _, saved = f4.linear_forward(x, w, b, "wang2025")
    print_table("saved-for-backward state of wang2025", ["state", "bytes", "vs float32 X", "target"],
                [("codes + scales + CSR residual", saved.nbytes, f"{saved.nbytes / x.nbytes:.3f}x", "<= 0.2x"),
                 (f"residual nnz {saved.residual_nnz} ({saved.residual_nnz / x.size:.2%} of X)", "", "", "")])

    # Where the time goes: each stage timed on its own, as a share of the fp32 forward+backward.
    r = f4.Recipe.get("wang2025")
    qx = r.input
    lo, hi = f4.occ_thresholds(x, r.alpha)
    xc, res = f4.occ(x, r.alpha)
    xq = f4.fake_quantize(xc, qx.fmt, qx.granularity, qx.scale_rule)
    wq = f4.fake_quantize(w, r.weight.fmt, r.weight.granularity, r.weight.scale_rule)
    s_w = np.abs(w).max(axis=1, keepdims=True) / np.float32(6)
    vw = (w / s_w).astype(np.float32)
    out_x = np.empty_like(x)
    out_w = np.empty_like(w)
    stages = [
        ("OCC thresholds (selection)", lambda: f4.occ_thresholds(x, r.alpha)),
        ("OCC clamp + CSR residual", lambda: f4.occ(x, r.alpha)),
        ("quantize X (codes + values)", lambda: f4.quantize(xc, qx.fmt, qx.granularity, qx.scale_rule)),
        ("quantize W (fake, x2: fwd and bwd)", lambda: (f4.fake_quantize(w, out=out_w), f4.fake_quantize(w, out=out_w))),
        ("dequantize X (backward)", lambda: f4.quantize(xc).dequantize()),
        ("residual product R·W_qᵀ (sparse, not used by the layer)", lambda: f4.csr_matmul_t(res, wq)),
        ("DGE f'(W/s) over W", lambda: f4.dge_derivative(vw)),
        ("GEMM forward X·Wᵀ", lambda: xq @ wq.T),
        ("GEMM dX = dY·W", lambda: dy @ wq),
        ("GEMM dW = dYᵀ·X", lambda: dy.T @ xq),
    ]
    table = []
    for name, fn in stages:
        t = median_seconds(fn, reps)
        table.append((name, f"{t / t_fp32:.3f}"))
    print_table("breakdown: each stage alone, as a fraction of the fp32 recipe's forward+backward",
                ["stage", "share"], table)

    # OCC selection against np.partition for the same two order statistics.
    big = rng.standard_normal(2_000_000, dtype=np.float32)
    n = big.size
    lo_i, hi_i = int(np.floor((1 - 0.99) * n)), min(int(np.floor(0.99 * n)), n - 1)
    t_part = median_seconds(lambda: np.partition(big, [lo_i, hi_i]), reps)
    t_occ = median_seconds(lambda: f4.occ_thresholds(big, 0.99), reps)
    print_table("OCC quantile on 2M values", ["method", "speed vs np.partition", "target"],
                [("np.partition([lo, hi])", "1.00x", ""), ("fp4swift occ_thresholds", f"{t_part / t_occ:.2f}x", ">= 1x")])


if __name__ == "__main__":
    main()
