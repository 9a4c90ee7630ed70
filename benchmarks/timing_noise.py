"""Benchmark: why `measure` times the way it does, measured on this machine.

1. The noise: the anchor and five sampled architectures (fast to slow) called in turn, in a fixed
   order, for about `--seconds`. How much do adjacent calls of different models slow down
   together, and for how long? How far does each model's estimate move between blocks of 40
   sweeps: the raw median, p10 and min of its calls, and the estimate `measure` uses (relative to
   the anchor, each call's momentary slowdown removed, times the anchor's overall median)?
2. The call order: 32 architectures timed in two different chunk compositions (16 + anchor each),
   once with a fixed order and once shuffled every sweep; how far each architecture's latency
   relative to the anchor moves between the two compositions.

    .venv/bin/python benchmarks/timing_noise.py [--seconds 120] [--out benchmarks/results/timing_noise.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from latency_models.measure import anchor_spec, call_times, deployed_runner, interleaved_stats
from search_space import SearchSpace, sample


def sampled(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [sample(rng, SearchSpace(), 32, 3, 10) for _ in range(n)]


def spread(estimates: np.ndarray) -> dict:
    """Blocks x models: each estimate's relative distance from its model's median over blocks."""
    rel = np.abs(estimates / np.median(estimates, 0) - 1)
    return {"median": float(np.median(rel)), "p95": float(np.percentile(rel, 95)),
            "within_5": float(np.mean(rel <= 0.05))}


def relative_to_anchor(order: list, ms: np.ndarray, keys: list) -> np.ndarray:
    """Each key's latency, as `measure` estimates it, over the anchor's (keys[0])."""
    stats = interleaved_stats(order, ms)
    return np.array([stats[k]["median_ms"] for k in keys]) / stats[keys[0]]["median_ms"]


def noise_structure(seconds: float) -> dict:
    specs = sampled(40, 5)
    runners = {s.arch_id: deployed_runner(s)[0] for s in specs}
    typical = {k: float(np.median(call_times({k: r}, 5, warmup_calls=2)[1])) for k, r in runners.items()}
    by_speed = sorted(typical, key=typical.get)
    picked = [by_speed[int(q * (len(by_speed) - 1))] for q in (0.05, 0.3, 0.55, 0.8, 0.97)]
    chosen = {"anchor": deployed_runner(anchor_spec(specs[0]))[0], **{k: runners[k] for k in picked}}
    sweeps = int(seconds * 1e3 / (sum(typical[k] for k in picked) + typical[picked[2]]))
    order, ms = call_times(chosen, sweeps, shuffle=False)
    keys = list(chosen)
    who = np.array([keys.index(k) for k in order])
    dev = np.log(ms) - np.array([np.median(np.log(ms[who == m])) for m in range(len(keys))])[who]
    ms_per_call = float(ms.mean())
    autocorr = {lag: float(np.corrcoef(dev[:-lag], dev[lag:])[0, 1]) for lag in (1, 6, 30, 150, 600)}
    blocks = np.array_split(np.arange(sweeps), sweeps // 40)
    est = {"raw_median": [], "raw_p10": [], "raw_min": [], "measure": []}
    anchor_median = float(np.median(ms[who == 0]))
    for b in blocks:
        idx = np.arange(b[0] * len(keys), (b[-1] + 1) * len(keys))
        w, t = who[idx], ms[idx]
        est["raw_median"].append([np.median(t[w == m]) for m in range(1, len(keys))])
        est["raw_p10"].append([np.percentile(t[w == m], 10) for m in range(1, len(keys))])
        est["raw_min"].append([t[w == m].min() for m in range(1, len(keys))])
        est["measure"].append(relative_to_anchor([keys[m] for m in w], t, keys)[1:] * anchor_median)
    return {"models": {k: typical.get(k) for k in keys}, "sweeps": sweeps,
            "seconds": float(ms.sum() / 1e3), "adjacent_call_correlation": autocorr[1],
            "autocorrelation": {f"{lag} calls ({lag * ms_per_call / 1e3:.2f} s)": v for lag, v in autocorr.items()},
            "blocks": len(blocks), "spread_between_blocks": {k: spread(np.array(v)) for k, v in est.items()}}


def call_order(sweeps: int) -> dict:
    specs = sampled(32, 12)
    runners = {s.arch_id: deployed_runner(s)[0] for s in specs}
    anchor = deployed_runner(anchor_spec(specs[0]))[0]
    ids = list(runners)
    compositions = [[ids[:16], ids[16:]], [ids[::2], ids[1::2]]]
    out = {}
    for shuffle in (False, True):
        rel = []
        for chunks in compositions:
            r = {}
            for chunk in chunks:
                keys = ["anchor", *chunk]
                order, ms = call_times({"anchor": anchor, **{k: runners[k] for k in chunk}}, sweeps, shuffle=shuffle)
                r.update(zip(keys, relative_to_anchor(order, ms, keys)))
            rel.append(r)
        diff = np.array([abs(rel[1][k] / rel[0][k] - 1) for k in ids])
        out["shuffled" if shuffle else "fixed"] = {"median": float(np.median(diff)),
                                                   "p90": float(np.percentile(diff, 90)), "max": float(diff.max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--sweeps", type=int, default=50, help="sweeps per chunk in the call-order part")
    ap.add_argument("--out", default="benchmarks/results/timing_noise.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {"noise": noise_structure(args.seconds), "call_order": call_order(args.sweeps)}
    n = results["noise"]
    print(f"{n['sweeps']} sweeps of 6 models, {n['seconds']:.0f} s of calls; correlation of adjacent calls' "
          f"slowdowns {n['adjacent_call_correlation']:.2f}")
    print("autocorrelation: " + ", ".join(f"{k} {v:.2f}" for k, v in n["autocorrelation"].items()))
    print(f"spread of an estimate between {n['blocks']} blocks of 40 sweeps (relative to its median):")
    for k, v in n["spread_between_blocks"].items():
        print(f"  {k:>10}: median {v['median']:.2%}, p95 {v['p95']:.2%}, within ±5% {v['within_5']:.1%}")
    for k, v in results["call_order"].items():
        print(f"call order {k:>8}: latency relative to the anchor moves between chunk compositions by "
              f"median {v['median']:.2%}, p90 {v['p90']:.2%}, max {v['max']:.2%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
