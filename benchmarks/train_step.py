"""Training-step throughput of recipes against the fp32 recipe, on `fp4swift train`'s model.

    python benchmarks/train_step.py [--recipes fp32,fp4-direct,wang2025] [--rounds 6] [--block 4]
                                    [--threads 1] [model flags: --d-model 128 --layers 4 ...]

Target (issue: PyTorch integration and training): wang2025 >= 0.8x fp32's tokens/s.

`fp4swift train` runs its recipes one after another, so its tokens/s ratio also measures
whatever else the shared machine did meanwhile. Here every recipe's model (same
initialization, same real batches) takes turns in blocks of --block optimizer steps for
--rounds rounds; the first step of each block is not timed (it pays for the switch:
thread settings, caches). Ratios are of median step times, wall clock and process CPU
time (CPU time ignores the time the process waited for a core), and of the main thread's CPU
time: the work no other thread takes over, a bound of the wall time on an idle machine that a
busy one disturbs less than the wall clock.

--amdahl adds the row `free linears`: fp32's model with the GEMMs of every layer an FP4 recipe
converts (not the LM head) replaced by outputs and gradients that cost nothing. Its step time is
the part all recipes share (attention, norms, embeddings, LM head, loss, optimizer), so
fp32 / free is the most any recipe can gain by making its linear layers faster (Amdahl).
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

FREE = "free linears"


class _FreeGEMM(torch.autograd.Function):
    """y = 0 [.., N], dx = 0, dw = 0 from cached buffers: a linear layer whose work costs nothing."""

    buffers: Dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _zeros(shape: tuple) -> torch.Tensor:
        b = _FreeGEMM.buffers.get(shape)
        if b is None:
            b = _FreeGEMM.buffers[shape] = torch.zeros(shape)
        return b

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shapes = (tuple(x.shape), tuple(w.shape))
        return _FreeGEMM._zeros(tuple(x.shape[:-1]) + (w.shape[0],)).view(tuple(x.shape[:-1]) + (w.shape[0],))

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        xs, ws = ctx.shapes
        return _FreeGEMM._zeros(xs), _FreeGEMM._zeros(ws)


class _FreeLinear(torch.nn.Module):
    def __init__(self, weight: torch.nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FreeGEMM.apply(x, self.weight)


def free_linears(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every bias-free linear layer the FP4 recipes convert (all but the LM
    head) replaced by `_FreeLinear`."""
    import fp4swift.torch as f4t

    for name, role in f4t.module_roles(model):
        if role == "lm_head":
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        lin = model.get_submodule(name)
        if lin.bias is not None:
            raise SystemExit("--amdahl supports bias-free linear layers only (the llama model)")
        setattr(parent, name.rsplit(".", 1)[-1], _FreeLinear(lin.weight))
    return model


def _thread_seconds() -> float:
    """CPU seconds of the calling thread."""
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


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
    ap.add_argument("--amdahl", action="store_true", help="add the 'free linears' row (see above)")
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
    if args.amdahl:
        model = free_linears(build_model(mcfg, 0))
        runs[FREE] = (model, make_optimizer(model, tcfg), False)
        names.append(FREE)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    main_cpu: Dict[str, List[float]] = {n: [] for n in names}
    step = 0
    for _ in range(args.rounds):
        for name in names:
            model, opt, fp4 = runs[name]
            configure_threads(args.threads, fp4=fp4)
            for i in range(args.block):
                x, y = train_batch(corpus.train, 0, step + i, args.batch_size, args.seq_len)
                t0, c0, m0 = time.perf_counter(), time.process_time(), _thread_seconds()
                loss = model.loss(torch.from_numpy(x), torch.from_numpy(y))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i > 0:
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                    main_cpu[name].append(_thread_seconds() - m0)
        step += args.block

    tokens = args.batch_size * args.seq_len
    med_wall = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    med_main = {n: statistics.median(v) for n, v in main_cpu.items()}
    targets = {"wang2025": ">= 0.8x", "quartet": ">= 1.5x", "mxfp4": ">= 1.5x", FREE: "Amdahl bound"}
    rows = [(n, f"{tokens / med_wall[n]:,.0f}", f"{med_wall['fp32'] / med_wall[n]:.3f}x",
             f"{med_cpu['fp32'] / med_cpu[n]:.3f}x", f"{med_main['fp32'] / med_main[n]:.3f}x", targets.get(n, ""))
            for n in names]
    print_table(f"training-step throughput vs fp32 ({mcfg.label}, d_model {mcfg.d_model}, {mcfg.layers} layers, "
                f"{args.batch_size}x{args.seq_len} tokens per step, {args.threads} thread(s), "
                f"median of {len(wall['fp32'])} steps per recipe)",
                ["recipe", "tokens/s (wall)", "vs fp32 (wall)", "vs fp32 (CPU time)", "vs fp32 (main-thread CPU)",
                 "target"], rows)


if __name__ == "__main__":
    main()
