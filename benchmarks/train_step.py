"""Training-step throughput of recipes against the fp32 recipe, on `fp4swift train`'s model.

    python benchmarks/train_step.py [--recipes fp32,fp4-direct,wang2025] [--rounds 6] [--block 4]
                                    [--threads 1] [model flags: --d-model 128 --layers 4 ...]

Target (issue: PyTorch integration and training): wang2025 >= 0.8x fp32's tokens/s.

`fp4swift train` runs its recipes one after another, so its tokens/s ratio also measures
whatever else the shared machine did meanwhile. Here every recipe's model (same
initialization, same real batches) takes turns in blocks of --block optimizer steps for
--rounds rounds; the first step of each block is not timed (it pays for the switch:
thread settings, caches). Ratios are of median step times, wall clock and process CPU
time (CPU time ignores the time the process waited for a core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import print_table  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `fp4swift train` does (train/threads.py)
import torch  # noqa: E402

from fp4swift.train.data import load_corpus, train_batch  # noqa: E402
from fp4swift.train.model import ModelConfig, build_model  # noqa: E402
from fp4swift.train.runner import (TrainConfig, check_recipes, configure_threads, make_optimizer,  # noqa: E402
                                   prepare_model, resolve_recipe)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="fp32,fp4-direct,wang2025", help="comma-separated; fp32 is always the baseline")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=4, help="optimizer steps per turn (the first is not timed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=ModelConfig.d_model)
    ap.add_argument("--layers", type=int, default=ModelConfig.layers)
    ap.add_argument("--heads", type=int, default=ModelConfig.heads)
    ap.add_argument("--seq-len", type=int, default=ModelConfig.seq_len)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    args = ap.parse_args()
    if args.block < 2 or args.rounds < 1:
        ap.error("--block must be at least 2 and --rounds at least 1")
    names = ["fp32"] + [r for r in args.recipes.split(",") if r and r != "fp32"]
    check_recipes(names)
    mcfg = ModelConfig(d_model=args.d_model, layers=args.layers, heads=args.heads, seq_len=args.seq_len)
    tcfg = TrainConfig(batch_size=args.batch_size)
    corpus = load_corpus(None)

    runs = {}
    for name in names:
        model = prepare_model(build_model(mcfg, 0), name)
        runs[name] = (model, make_optimizer(model, tcfg), resolve_recipe(name) is not None)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    step = 0
    for _ in range(args.rounds):
        for name in names:
            model, opt, fp4 = runs[name]
            configure_threads(args.threads, fp4=fp4)
            for i in range(args.block):
                x, y = train_batch(corpus.train, 0, step + i, args.batch_size, args.seq_len)
                t0, c0 = time.perf_counter(), time.process_time()
                loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i > 0:
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
        step += args.block

    tokens = args.batch_size * args.seq_len
    med_wall = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    targets = {"wang2025": ">= 0.8x"}
    rows = [(n, f"{tokens / med_wall[n]:,.0f}", f"{med_wall['fp32'] / med_wall[n]:.3f}x",
             f"{med_cpu['fp32'] / med_cpu[n]:.3f}x", targets.get(n, "")) for n in names]
    print_table(f"training-step throughput vs fp32 ({mcfg.label}, d_model {mcfg.d_model}, {mcfg.layers} layers, "
                f"{args.batch_size}x{args.seq_len} tokens per step, {args.threads} thread(s), "
                f"median of {len(wall['fp32'])} steps per recipe)",
                ["recipe", "tokens/s (wall)", "vs fp32 (wall)", "vs fp32 (CPU time)", "target"], rows)


if __name__ == "__main__":
    main()
