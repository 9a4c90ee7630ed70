"""Benchmark: the presets at paper scale (224 px, 1000 classes) against timm's implementations of the
same papers (`deit_tiny_patch16_224`, `efficientvit_m0`, random weights): parameters, and CPU latency
at batch 1 on one thread, ours deployed and in eval against timm's in eval, called in shuffled
alternation (`latency_models.measure.time_interleaved`). The difference is the cost of our
remaining deviations (README, "Deviations").

    .venv/bin/python benchmarks/preset_fidelity.py [--sweeps 60] [--out benchmarks/results/preset_fidelity.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch

from latency_models.measure import cpu_model, time_interleaved, torch_runner
from search_space import build_model, count_params, deploy, preset

TIMM_TWINS = {"deit-tiny": "deit_tiny_patch16_224", "efficientvit-m0": "efficientvit_m0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/preset_fidelity.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    results = {"cpu": cpu_model(), "threads": 1, "batch": 1, "sweeps": args.sweeps, "presets": {}}
    for name, timm_name in TIMM_TWINS.items():
        ours = build_model(preset(name)).eval()
        theirs = timm.create_model(timm_name, pretrained=False).eval()
        runners = {"ours_deployed": torch_runner(deploy(ours), x), "ours_eval": torch_runner(ours, x),
                   "timm_eval": torch_runner(theirs, x)}
        ms = {k: round(v["median_ms"], 3) for k, v in time_interleaved(runners, args.sweeps).items()}
        row = {"timm": timm_name, "params_ours": count_params(ours), "params_timm": count_params(theirs),
               **{f"{k}_ms": v for k, v in ms.items()},
               "deployed_vs_timm": round(ms["ours_deployed"] / ms["timm_eval"], 3),
               "eval_vs_timm": round(ms["ours_eval"] / ms["timm_eval"], 3)}
        row["params_rel"] = round(row["params_ours"] / row["params_timm"] - 1, 4)
        results["presets"][name] = row
        print(json.dumps({name: row}), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
