"""Benchmark: CPU latency of every seed preset before and after `deploy`, and LayerNorm vs PRepBN
twins after deploy. The models compared are called in alternation (shuffled every sweep) and the
machine's momentary slowdowns are taken out (`latency_models.measure.time_interleaved`); medians
and their ratio are reported.

    .venv/bin/python benchmarks/deploy_speed.py [--img-size 32] [--sweeps 200] [--out benchmarks/results/deploy_speed.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from latency_models.measure import time_interleaved, torch_runner
from search_space import build_model, deploy, presets
from search_space.check import randomize_norms


def interleaved(runs: dict, sweeps: int) -> dict[str, float]:
    """Each model's median ms, timed in alternation with the others."""
    return {k: v["median_ms"] for k, v in time_interleaved(runs, sweeps).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--sweeps", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/deploy_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {"img_size": args.img_size, "threads": 1, "sweeps": args.sweeps, "presets": {}, "twins": {}}
    specs = presets(args.img_size, 3, 10)
    for batch in (1, 32):
        x = torch.randn(batch, 3, args.img_size, args.img_size)
        for name, spec in specs.items():
            model = build_model(spec).eval()
            randomize_norms(model, torch.Generator().manual_seed(0))
            t = interleaved({"eval": torch_runner(model, x), "deployed": torch_runner(deploy(model), x)}, args.sweeps)
            results["presets"].setdefault(name, {})[f"batch{batch}"] = {**t, "speedup": t["eval"] / t["deployed"]}
            print(f"{name:16s} batch {batch:2d}: eval {t['eval']:8.3f} ms  deployed {t['deployed']:8.3f} ms  "
                  f"x{t['eval'] / t['deployed']:.2f}", flush=True)
        # the same architecture with LayerNorm vs PRepBN (and BN), both deployed
        base = specs["deit-tiny"]
        twins = {norm: deploy(build_model(dataclasses.replace(base, stages=tuple(
            dataclasses.replace(s, norm=norm) for s in base.stages)))) for norm in ("layernorm", "prepbn", "batchnorm")}
        t = interleaved({k: torch_runner(m, x) for k, m in twins.items()}, args.sweeps)
        results["twins"][f"batch{batch}"] = {**t, "ln_over_prepbn": t["layernorm"] / t["prepbn"]}
        print(f"deit-tiny twins batch {batch:2d}: " + "  ".join(f"{k} {v:.3f} ms" for k, v in t.items())
              + f"  LN/PRepBN x{t['layernorm'] / t['prepbn']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
