"""The `fp4swift` command.

    fp4swift formats [--input X.npy] [--rows R --cols C]   fidelity and throughput of every quantizer
"""
from __future__ import annotations

import argparse
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


def cmd_formats(args: argparse.Namespace) -> int:
    import fp4swift as f4

    if args.input:
        try:
            x = np.load(args.input)
        except (OSError, ValueError) as e:
            print(f"fp4swift formats: cannot read {args.input}: {e}", file=sys.stderr)
            return 2
        source = args.input
    else:
        x = _activation_like(args.rows, args.cols, args.seed)
        source = f"synthetic activation-like tensor {args.rows}x{args.cols} (Student-t(4) + outlier channels)"
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.size == 0:
        print("fp4swift formats: the input tensor is empty", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fp4swift", description="FP4 training numerics (Swift core).")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("formats", help="fidelity and throughput of every format and scaling on one tensor")
    f.add_argument("--input", help="a .npy file holding the tensor (default: a synthetic activation-like tensor)")
    f.add_argument("--rows", type=int, default=2048)
    f.add_argument("--cols", type=int, default=2048)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_formats)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
