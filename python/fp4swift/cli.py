"""The `fp4swift` command.

    fp4swift formats [--input X.npy] [--rows R --cols C]   fidelity and throughput of every quantizer
    fp4swift rules [--input X.npy] [--fmt e2m1] [--show N]  where the scale rules of one family disagree
    fp4swift train [--arch llama|gpt2] [--recipes fp32,fp4-direct,wang2025] [--steps N | --tokens N]
                   [--out DIR] [--resume]              train a small LLaMA- or GPT-2-style model under each recipe
    fp4swift fidelity [--steps N | --checkpoint PATH]    Wang et al. Table 1 on the model's activations
    fp4swift compare RUN...                              the train comparison over separately run seeds
    fp4swift grid-stats RUN                              trained weights on the FP4 grid (the DGE study)
    fp4swift scaling-law RUNS_DIR... [--out DIR]         fit L(N, D) to finished runs; effN, effD per recipe

`train`, `fidelity`, `compare` and `grid-stats` need PyTorch (pip install -e .[torch]); `scaling-law` needs scipy;
`formats` needs neither.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import numpy as np


def _activation_like(rows: int, cols: int, seed: int) -> np.ndarray:
    """A synthetic activation-shaped tensor: Student-t(4) body with a few outlier channels,
    the pattern Wang et al. report for LLM activations (not real model data)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, size=(rows, cols)).astype(np.float32)
    outliers = rng.choice(cols, size=max(1, cols // 256), replace=False)
    x[:, outliers] *= 20.0
    return x


def _median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _load_input(args: argparse.Namespace, error) -> "tuple":
    """(x, source) from --input or a synthetic activation-like tensor, or (None, status)."""
    if args.input:
        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as e:
            return None, error(f"cannot read {args.input}: {e}")
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub" or x.dtype == np.bool_:
            return None, error(f"{args.input} must hold one numeric array, got {getattr(x, 'dtype', type(x).__name__)}")
        source = args.input
    else:
        for flag in ("rows", "cols"):
            if getattr(args, flag) <= 0:
                return None, error(f"--{flag} must be positive, got {getattr(args, flag)}")
        if args.rows * args.cols > 1 << 28:
            return None, error(f"--rows x --cols = {args.rows * args.cols:,} elements is too large (at most {1 << 28:,})")
        if args.seed < 0:
            return None, error(f"--seed must be 0 or more, got {args.seed}")
        x = _activation_like(args.rows, args.cols, args.seed)
        source = f"synthetic activation-like tensor {args.rows}x{args.cols} (Student-t(4) + outlier channels)"
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.size == 0:
        return None, error("the input tensor is empty")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        return None, error(f"the input holds {bad:,} non-finite value(s) (NaN or inf, or beyond float32's range); "
                     f"the table needs finite values")
    return x, source


def cmd_formats(args: argparse.Namespace) -> int:
    import fp4swift as f4

    def error(msg: str) -> int:
        print(f"fp4swift formats: error: {msg}", file=sys.stderr)
        return 2

    x, source = _load_input(args, error)
    if x is None:
        return source
    out = np.empty_like(x)
    copy_t = _median_time(lambda: np.copyto(out, x))
    configs = [
        ("e2m1", "tensor", "absmax", None),
        ("e2m1", "row", "absmax", None),
        ("e2m1", "block", "absmax", 32),
        ("e2m1", "block", "e8m0", 32),
        ("e2m1", "block", "nvfp4", 16),
        ("e1m2", "row", "absmax", None),
        ("e3m0", "row", "absmax", None),
        ("e4m3", "row", "absmax", None),
        ("e5m2", "row", "absmax", None),
    ]
    print(f"input: {source}; shape {x.shape}")
    header = f"{'format':6} {'granularity':12} {'scale':7} {'cosine':>8} {'MSE':>10} {'SNR dB':>7} {'bits/el':>7} {'vs copyto':>9}"
    print(header)
    print("-" * len(header))
    for fmt, gran, rule, block in configs:
        cols = x.shape[-1]
        if block and cols % block:
            continue
        kw = dict(fmt=fmt, granularity=gran, scale_rule=rule, block=block)
        xh = f4.fake_quantize(x, **kw)
        m = f4.fidelity(x, xh)
        bits = f4.quantize(x, **kw).bits_per_element
        t = _median_time(lambda: f4.fake_quantize(x, out=out, **kw))
        label = f"{gran}({block})" if block else gran
        print(f"{fmt:6} {label:12} {rule:7} {m['cosine']:8.4f} {m['mse']:10.3g} {m['snr_db']:7.2f} {bits:7.2f} {copy_t / t:8.2f}x")
    print("vs copyto: fake_quantize throughput relative to np.copyto on the same array (median of 5).")
    return 0


#: Scale-rule families that answer the same question differently (numerics.md §2), with their block.
RULE_FAMILIES = {
    "e8m0": (("e8m0", "e8m0_ceil", "e8m0_even", "e8m0_rceil"), 32),
    "nvfp4": (("nvfp4", "nvfp4_torchao"), 16),
}


def _element_codes(q, n: int) -> np.ndarray:
    """One code per element of a QuantizedTensor (FP4 codes unpacked from their nibbles)."""
    c = q.codes
    if q.codes.size == n:
        return c
    both = np.empty(2 * c.size, dtype=np.uint8)
    both[0::2], both[1::2] = c & 0xF, c >> 4
    return both[:n]


def cmd_rules(args: argparse.Namespace) -> int:
    """Where the rules of a family disagree on one tensor: per pair, the share of blocks whose
    stored scale byte differs and of elements whose x̂ differs, each rule's error, then the first
    disagreeing blocks with their scale bytes and the elements that differ."""
    import fp4swift as f4

    def error(msg: str) -> int:
        print(f"fp4swift rules: error: {msg}", file=sys.stderr)
        return 2

    if args.show < 0:
        return error(f"--show must be 0 or more, got {args.show}")
    families = list(RULE_FAMILIES) if args.family == "all" else [args.family]
    if args.fmt not in f4.FORMATS or f4.format_info(args.fmt).scale_only:
        return error(f"--fmt must be an element format, got {args.fmt!r}")
    x, source = _load_input(args, error)
    if x is None:
        return source
    print(f"input: {source}; shape {x.shape}")
    status = 0
    for fam in families:
        rules, block = RULE_FAMILIES[fam]
        fmt = "e2m1" if fam == "nvfp4" else args.fmt
        cols = x.shape[-1] if x.ndim else 1
        if cols % block:
            print(f"\n{fam} family: skipped (the last dimension, {cols}, is not a multiple of {block})")
            status = status or 1
            continue
        kw = dict(fmt=fmt, granularity=f"block({block})")
        q = {r: f4.quantize(x, scale_rule=r, **kw) for r in rules}
        xh = {r: q[r].dequantize().reshape(-1, block) for r in rules}
        sb = {r: q[r].scales.reshape(-1) for r in rules}
        xb = x.reshape(-1, block)
        n_blocks = xb.shape[0]
        print(f"\n{fam} family, {fmt} elements in blocks of {block} ({n_blocks:,} blocks, {x.size:,} elements)")
        for r in rules:
            m = f4.fidelity(x, xh[r].reshape(x.shape))
            extra = f", tensor scale {q[r].tensor_scale:.9g}" if fam == "nvfp4" else ""
            print(f"  {r:14} MSE {m['mse']:.4g}  SNR {m['snr_db']:6.2f} dB{extra}")
        codes = {r: _element_codes(q[r], x.size) for r in rules}
        header = (f"  {'rule a':14} {'rule b':14} {'scale bytes differ':>19} {'codes differ':>16} "
                  f"{'x-hat differs':>16}")
        print(header)
        for i, a in enumerate(rules):
            for b in rules[i + 1:]:
                bd = np.count_nonzero(sb[a] != sb[b])
                cd = np.count_nonzero(codes[a] != codes[b])
                ed = np.count_nonzero(xh[a].view(np.uint32) != xh[b].view(np.uint32))
                print(f"  {a:14} {b:14} {bd:8,} ({100 * bd / n_blocks:5.1f}%) {cd:7,} ({100 * cd / x.size:5.1f}%) "
                      f"{ed:7,} ({100 * ed / x.size:5.1f}%)")
        differ = np.flatnonzero(np.any(np.stack([np.any(xh[r].view(np.uint32) != xh[rules[0]].view(np.uint32), axis=1)
                                                 for r in rules[1:]]), axis=0))
        if args.show and differ.size:
            print(f"  first {min(args.show, differ.size)} of {differ.size:,} blocks where the rules disagree "
                  f"(block = flat index // {block}; scale bytes: e8m0 exponent b, 2^(b-127); nvfp4 e4m3 code):")
            for g in differ[: args.show]:
                amax = float(np.max(np.abs(xb[g])))
                bytes_ = ", ".join(f"{r} {int(sb[r][g])}" for r in rules)
                print(f"    block {g} (amax {amax:.6g}): scale bytes {bytes_}")
                diff = np.flatnonzero(np.any(np.stack([xh[r][g].view(np.uint32) != xh[rules[0]][g].view(np.uint32)
                                                       for r in rules[1:]]), axis=0))
                for e in diff[:4]:
                    vals = ", ".join(f"{r} {float(xh[r][g][e]):.9g}" for r in rules)
                    print(f"      x[{g * block + e}] = {float(xb[g][e]):.9g} -> {vals}")
                if diff.size > 4:
                    print(f"      ... {diff.size - 4} more element(s) of this block differ")
        elif not differ.size:
            print("  the rules agree on every element of this input")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fp4swift", description="FP4 training numerics (Swift core).")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("formats", help="fidelity and throughput of every format and scaling on one tensor")
    f.add_argument("--input", help="a .npy file holding the tensor (default: a synthetic activation-like tensor)")
    f.add_argument("--rows", type=int, default=2048)
    f.add_argument("--cols", type=int, default=2048)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_formats)

    rl = sub.add_parser("rules", help="where the scale rules of one family (e8m0 modes; nvfp4 vs nvfp4_torchao) "
                                      "disagree on one tensor",
                        description="Quantizes one tensor under every rule of a family (e8m0, e8m0_ceil, e8m0_even, "
                                    "e8m0_rceil in blocks of 32; nvfp4 and nvfp4_torchao in blocks of 16) and prints "
                                    "how often their scale bytes and dequantized values differ, each rule's error, and "
                                    "the first blocks where they disagree (numerics.md §2).")
    rl.add_argument("--input", help="a .npy file holding the tensor (default: a synthetic activation-like tensor)")
    rl.add_argument("--rows", type=int, default=256)
    rl.add_argument("--cols", type=int, default=1024)
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument("--family", choices=["all", *RULE_FAMILIES], default="all")
    rl.add_argument("--fmt", default="e2m1", help="element format of the e8m0 family (default e2m1; nvfp4 is e2m1)")
    rl.add_argument("--show", type=int, default=5, help="disagreeing blocks to list per family (default 5)")
    rl.set_defaults(func=cmd_rules)

    t = sub.add_parser("train", help="train a small LLaMA- or GPT-2-style model under several precision recipes "
                                     "side by side",
                       description="Trains one byte-level LLaMA-style (--arch gpt2: GPT-2-style) model per recipe "
                                   "from the same initialization and data order (the recipes take turns of 10 steps, so "
                                   "that a shared machine's load changes hit all of them alike and tokens/s compare), "
                                   "then prints and saves a summary "
                                   "table and a loss-curve plot; with --seeds and an --lr list, every recipe at "
                                   "every rate from every seed (a trial each), compared seed by seed with intervals. "
                                   "Output: DIR/config.json, DIR/run.json (parameter "
                                   "counts and tokens trained, for `fp4swift scaling-law`), DIR/<trial>/metrics.csv "
                                   "and checkpoint.pt (<trial> = <recipe>[/lr<rate>][/seed<k>]), DIR/loss_curves.png, "
                                   "DIR/summary.md, summary.csv and comparison.csv. Ctrl-C "
                                   "writes a checkpoint; --resume continues exactly where the run stopped.")
    t.add_argument("--recipes", help="comma-separated recipes (default fp32,fp4-direct,wang2025); fp32 = the "
                                     "unconverted model; ablations override recipe fields: wang2025:dge=off, "
                                     "wang2025:alpha=0.97, wang2025:occ=off, wang2025:granularity=tensor; other scale "
                                     "rules and r-bit stochastic rounding: mxfp4:scale_rule=e8m0_rceil, "
                                     "nvfp4:scale_rule=nvfp4_torchao:stochastic_bits=8")
    t.add_argument("--study", help="the recipes of one of the papers' ablations instead of --recipes: "
                                   "wang2025-ablation (DGE, OCC, compensation, alpha), wang2025-formats (e1m2, e2m1, "
                                   "e3m0), block-recipes (mxfp4, nvfp4, quartet, zhou2025 with and without its "
                                   "schedule), dge (wang2025 with and without DGE); docs/experiments.md")
    _model_args(t)
    t.add_argument("--switch-at", type=float,
                   help="target-precision schedule (Zhou et al.): at this fraction of the steps (e.g. 0.9) switch "
                        "every quantized layer of every FP4 recipe to --switch-to; a recipe spec can set its own: "
                        "zhou2025:switch_at=0.9, or opt out with :switch_at=off (default: no switch)")
    t.add_argument("--switch-to", help="the schedule's target recipe, fp8 (default) or fp32 (or any recipe)")
    t.add_argument("--eval-every", type=int, help="validation every N steps (default 20)")
    t.add_argument("--eval-batches", type=int, help="fixed validation batches per evaluation (default 4)")
    t.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default 50)")
    t.add_argument("--out", help="output directory (default runs/<YYYYmmdd-HHMMSS>, with the symlink runs/latest "
                                 "pointing at it; with --resume the default is runs/latest)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints "
                                                         "(its config.json is used; training flags may not change)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: act as Ctrl-C after N steps
    dp = t.add_argument_group("several processes (data-parallel; see README, 'Several processes')")
    dp.add_argument("--nproc", type=int, metavar="P",
                    help="train data-parallel in P processes on this machine: starts torchrun's engine "
                         "(torch.distributed.run --standalone) on `python -m fp4swift train` with the other flags. "
                         "--batch-size is the global batch (a multiple of P); each process trains on its share "
                         "and DistributedDataParallel sums the gradients over gloo. Several machines: run "
                         "`torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT "
                         "-m fp4swift train ...` on each")
    dp.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                    help="under torchrun: how long a process waits for the others in a collective before the "
                         "run fails (default $FP4SWIFT_DIST_TIMEOUT or 120)")
    t.set_defaults(func=_cmd_train)

    fi = sub.add_parser("fidelity", help="Wang et al. Table 1 (OCC clamp/compensation fidelity) on the model's "
                                         "linear-layer inputs",
                        description="Trains the fp32 model briefly (default 100 steps) or loads a checkpoint of "
                                    "`fp4swift train`, captures the input of every linear layer that convert() "
                                    "would convert, and prints cosine / MSE / SNR of the e2m1 per-token quantizer "
                                    "without clamping, with clamping, and with clamping plus compensation, next "
                                    "to the paper's numbers.")
    _model_args(fi)
    fi.add_argument("--checkpoint", help="a checkpoint.pt written by `fp4swift train` (skips training)")
    fi.add_argument("--batches", type=int, default=1, help="validation batches to capture (default 1)")
    fi.add_argument("--per-layer", action="store_true", help="also print the SNR of every layer")
    fi.add_argument("--no-progress", action="store_true", help="no progress bar")
    fi.set_defaults(func=_cmd_fidelity)
    cp = sub.add_parser("compare", help="the comparison of `train --seeds/--lr` over trials that ran as separate "
                                        "runs (e.g. one seed per process)")
    cp.add_argument("runs", nargs="+", help="`fp4swift train` output directories")
    cp.set_defaults(func=_cmd_compare)
    gs = sub.add_parser("grid-stats", help="where a training run's weights sit on the FP4 grid, how far they "
                                           "moved and AdamW's last step size, per trial (the DGE study)")
    gs.add_argument("run", help="a `fp4swift train` output directory")
    gs.add_argument("--json", help="also write the table to this JSON file")
    gs.set_defaults(func=_cmd_grid_stats)

    s = sub.add_parser("scaling-law", help="fit L(N, D) = (A/(N·effN)^α + B/(D·effD)^β)^γ + E to finished runs",
                       description="Reads finished `fp4swift train` runs (each RUNS_DIR is a run directory holding "
                                   "config.json, or a directory searched for them), takes one point per recipe and "
                                   "run (N = non-embedding parameters, D = tokens trained, L = final validation "
                                   "loss), fits A, α, B, β, γ, E to the base recipe's points (Huber loss on log L, "
                                   "many starts, as Hoffmann et al. and Quartet), then effN and effD of every other "
                                   "recipe with those frozen. Prints a table and writes DIR/scaling_fit.json, "
                                   "scaling_fit.csv and scaling_law.png. Needs scipy.")
    s.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="run directories or directories containing them")
    s.add_argument("--out", help="where to write the fit (default: the first RUNS_DIR)")
    s.add_argument("--recipes", help="comma-separated recipes to fit besides the base (default: every recipe found)")
    s.add_argument("--base", default="fp32", help="the reference recipe whose points fix A, α, B, β, γ, E "
                                                  "(effN = effD = 1; default fp32)")
    s.add_argument("--huber-delta", type=float, default=1e-3, help="δ of the Huber loss on log L (default 1e-3)")
    s.set_defaults(func=_cmd_scaling_law)

    c = sub.add_parser("cost", help="theoretical GEMM cost of training under each recipe, relative to 16-bit",
                       description="Counts the GEMM multiply-accumulates per training token of a decoder-only "
                                   "transformer by module role (attention, mlp, lm_head, other, attention core) and "
                                   "GEMM (forward, input-grad, weight-grad), then the cost of each recipe relative to "
                                   "16-bit training: FP8 = 1/2, FP4 = 1/4 per MAC, the attention core always 16-bit "
                                   "(numerics.md §7). Prints the FLOP shares, a table per recipe and the assumptions.")
    c.add_argument("--model", default="own", help="own (this project's training model; default), a preset "
                                                  "(llama-7b, llama-13b, llama-70b, gpt2) or a Hugging Face "
                                                  "config.json path (LLaMA family or GPT-2)")
    c.add_argument("--seq-len", type=int, help="context length (default: own 128, presets and config.json their "
                                               "max_position_embeddings / n_positions)")
    c.add_argument("--recipes", help="comma-separated recipes (default: every recipe)")
    c.add_argument("--include-attention-core", dest="include_attention_core", action="store_true", default=True,
                   help="shares and saving include the 16-bit attention core (default)")
    c.add_argument("--exclude-attention-core", dest="include_attention_core", action="store_false",
                   help="shares and saving over the linear layers only")
    c.add_argument("--causal", action="store_true", help="count only the unmasked half of the attention scores "
                                                         "(default: the full seq x seq square)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    cg = c.add_argument_group("own model (--model own)")
    cg.add_argument("--arch", choices=("llama", "gpt2"), help="llama (default) or gpt2")
    cg.add_argument("--d-model", type=int, help="model width (default 128)")
    cg.add_argument("--layers", type=int, help="decoder blocks (default 4)")
    cg.add_argument("--heads", type=int, help="attention heads (default 4)")
    cg.add_argument("--mlp-hidden", type=int, help="MLP hidden size (default: llama 8/3·d_model rounded up to 32, "
                                                   "gpt2 4·d_model)")
    c.set_defaults(func=_cmd_cost)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    """Model, data and optimization flags shared by `train` and `fidelity` (None = default / stored value)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--arch", choices=("llama", "gpt2"),
                   help="llama (default): RMSNorm, RoPE, SwiGLU; gpt2: LayerNorm, learned positions, GELU MLP, "
                        "Hugging Face GPT-2 module names (c_attn, c_proj, c_fc)")
    g.add_argument("--d-model", type=int, help="model width (default 128)")
    g.add_argument("--layers", type=int, help="decoder blocks (default 4)")
    g.add_argument("--heads", type=int, help="attention heads (default 4)")
    g.add_argument("--mlp-hidden", type=int, help="MLP hidden size (default: llama 8/3·d_model rounded up to 32, "
                                                  "gpt2 4·d_model)")
    g.add_argument("--tie-embeddings", action="store_true", default=None,
                   help="share the LM head's weight with the token embedding (default: untied)")
    g.add_argument("--seq-len", type=int, help="tokens (bytes) per sequence (default 128)")
    g.add_argument("--batch-size", type=int, help="sequences per step (default 16)")
    g.add_argument("--steps", type=int, help="optimizer steps per recipe (train: 200; fidelity: 100)")
    g.add_argument("--tokens", type=int, help="training tokens per recipe instead of --steps: "
                                              "steps = ceil(N / (batch-size·seq-len)); not with --steps")
    g.add_argument("--lr", help="peak AdamW learning rate, or a comma-separated sweep such as 6e-4,1e-3,2e-3 "
                                "(train: every recipe at every rate; the summary compares each recipe at its best "
                                "rate and at fp32's); default 4e-3, fp32's best rate on the default model; linear warmup, cosine decay")
    g.add_argument("--warmup", type=int, help="warmup steps (default steps/20)")
    g.add_argument("--seed", type=int, help="seed of the initialization and the data order (default 0)")
    g.add_argument("--seeds", type=int, help="train: each recipe from this many seeds (--seed, --seed+1, ...; "
                                             "default 1); the summary gives mean, spread and intervals over them")
    g.add_argument("--init", help="weight initialization: torch (default: PyTorch's nn.Linear / nn.Embedding "
                                  "defaults), normal (N(0, 0.02), residual projections scaled by 1/sqrt(2·layers); "
                                  "the default of runs before 2026-12), or linear=RULE,embedding=RULE")
    g.add_argument("--data", help="a text file or a directory of text files (read recursively) "
                                  "instead of the Python standard library's .py files")
    g.add_argument("--threads", type=int, help="CPU threads per recipe (default 1: robust when other processes "
                                               "share the cores, and a per-core cost comparison); fp32 runs torch "
                                               "on them, FP4 recipes the Swift core and OpenBLAS and torch too when OpenMP "
                                               "waits passively (the default here; torch on 1 otherwise)")


def _needs_torch(cmd: str) -> bool:
    # Before torch loads its OpenMP runtime: idle OpenMP workers sleep instead of spinning, so
    # torch and the Swift core's threads can share the cores (train/threads.py). A value the
    # user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"fp4swift {cmd}: error: needs PyTorch: pip install -e .[torch]", file=sys.stderr)
        return False
    return True


def _cmd_train(args: argparse.Namespace) -> int:
    if not _needs_torch("train"):
        return 2
    from .train import distributed

    if args.nproc is not None:
        return distributed.launch(args.nproc, args._argv)
    from .train.command import train_command

    return distributed.run_rank(train_command, args)


def _cmd_fidelity(args: argparse.Namespace) -> int:
    if not _needs_torch("fidelity"):
        return 2
    from .train.fidelity import fidelity_command

    return fidelity_command(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    if not _needs_torch("compare"):
        return 2
    from .train.collect import compare_command

    return compare_command(args)


def _cmd_grid_stats(args: argparse.Namespace) -> int:
    if not _needs_torch("grid-stats"):
        return 2
    from .train.gridstats import grid_stats_command

    return grid_stats_command(args)


def _cmd_scaling_law(args: argparse.Namespace) -> int:
    from .train.scaling import scaling_law_command

    return scaling_law_command(args)


def _cmd_cost(args: argparse.Namespace) -> int:
    from .cost import cost_command

    return cost_command(args)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` starts the others with these
    try:
        status = int(args.func(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # `fp4swift cost | head`: the reader went away; end quietly, as a command killed by
        # SIGPIPE would (exit 141), and keep Python from complaining when it flushes at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
