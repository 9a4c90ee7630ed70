"""Benchmark: CPU cost of PyTorch's scaled_dot_product_attention at the space's shapes, batch 1,
1 thread: the fused kernel (q, k and v share a head dim) against the unfused math path (they do
not). This is why the latency predictor tallies the two apart.

    .venv/bin/python benchmarks/sdpa_paths.py [--sweeps 40] [--out benchmarks/results/sdpa_paths.json]
"""
import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from latency_models.measure import time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweeps", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results/sdpa_paths.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runners = {}
    for n, h, kd, dv in itertools.product((64, 256), (1, 4), (8, 16, 32, 64), (8, 32, 64)):
        q, k, v = torch.randn(1, h, n, kd), torch.randn(1, h, n, kd), torch.randn(1, h, n, dv)

        def run(q=q, k=k, v=v):
            with torch.inference_mode():
                F.scaled_dot_product_attention(q, k, v)
        runners[(n, h, kd, dv)] = run
    stats = time_interleaved(runners, args.sweeps)
    rows = [{"tokens": n, "heads": h, "key_dim": kd, "value_dim": dv, "path": "fused" if kd == dv else "math",
             "ms": st["median_ms"], "ns_per_flop": st["median_ms"] * 1e6 / (h * n * n * (kd + dv))}
            for (n, h, kd, dv), st in stats.items()]
    print("tokens heads kd  dv  path      ms  ns/FLOP")
    for r in rows:
        print(f"{r['tokens']:6d} {r['heads']:5d} {r['key_dim']:3d} {r['value_dim']:3d}  {r['path']:5s} "
              f"{r['ms']:7.3f}  {r['ns_per_flop']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
