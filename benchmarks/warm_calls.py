"""Benchmark: how the timing protocol moves a latency table and its predictor. The same sampled
architectures are timed in chunks of 16 beside the anchor, each chunk twice with the timed call
first in its turn (warm calls 0) and twice after two untimed calls of the same model (warm
calls 2), in the order 0, 2, 2, 0; each protocol's table is fitted on the same seeded splits.

    .venv/bin/python benchmarks/warm_calls.py [--shape 1x8] [--n 96] [--out benchmarks/results/warm_calls.json]
"""
import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from latency_models import LatencyModel
from latency_models.measure import (anchor_spec, call_times, cpu_model, deployed_runner, interleaved_stats,
                                     specs_to_time)
from latency_models.validate import metrics
from search_space import SearchSpace

PROTOCOLS = (0, 2, 2, 0)  # warm calls of each timing of a chunk, in turn


def ratios(anchor: Callable[[], None], chunk: dict, warm_calls: int, seed: int) -> dict[str, float]:
    """Each of the chunk's architectures' latency over the anchor's, timed together."""
    stats = interleaved_stats(*call_times({"anchor": anchor, **chunk}, 50, warm_calls=warm_calls, seed=seed))
    return {a: st["median_ms"] / stats["anchor"]["median_ms"] for a, st in stats.items() if a != "anchor"}


def held_out(specs: list, y: np.ndarray, seeds: int = 5) -> list[float]:
    """Share within ±10% on held-out quarters of the architectures, one per seed."""
    shares = []
    for seed in range(seeds):
        test = np.zeros(len(y), bool)
        test[np.random.default_rng(seed).permutation(len(y))[: len(y) // 4]] = True
        model = LatencyModel(reference_ms=1.0).fit([s for s, t in zip(specs, test) if not t], y[~test], seed=seed)
        shares.append(metrics(model.predict_features(model.feature_matrix(specs)[test]), y[test])["within_10"])
    return shares


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1x8", help="channels x pixels")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/warm_calls.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    chans, size = map(int, args.shape.split("x"))
    specs = specs_to_time(size, chans, 10, SearchSpace(), n=args.n, seed=0)
    anchor = deployed_runner(anchor_spec(specs[0]), "onnxruntime")[0]
    rows = {a: {} for a in (s.arch_id for s in specs)}
    t0 = time.perf_counter()
    for i in range(0, len(specs), 16):
        chunk = {s.arch_id: deployed_runner(s, "onnxruntime")[0] for s in specs[i:i + 16]}
        for k, warm in enumerate(PROTOCOLS):
            for a, r in ratios(anchor, chunk, warm, seed=i + k).items():
                rows[a].setdefault(warm, []).append(r)
        print(f"{min(i + 16, len(specs))}/{len(specs)} timed, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = {"machine": cpu_model(), "date": time.strftime("%Y-%m-%d"), "shape": args.shape, "n": len(specs)}
    for warm in sorted(set(PROTOCOLS)):
        pairs = np.array([rows[s.arch_id][warm] for s in specs])
        y = pairs.mean(axis=1)
        shares = held_out(specs, y)
        summary[f"warm_calls_{warm}"] = {
            "repeat_median_abs_diff": float(np.median(np.abs(pairs[:, 1] / pairs[:, 0] - 1))),
            "repeat_within_10": float(np.mean(np.abs(pairs[:, 1] / pairs[:, 0] - 1) < 0.1)),
            "held_out_within_10": shares, "held_out_within_10_median": float(np.median(shares))}
    warm_over_cold = [np.mean(rows[s.arch_id][2]) / np.mean(rows[s.arch_id][0]) for s in specs]
    summary["warm_over_cold_ratio_to_anchor"] = {"median": float(np.median(warm_over_cold)),
                                                 "p10": float(np.percentile(warm_over_cold, 10)),
                                                 "p90": float(np.percentile(warm_over_cold, 90))}
    args.out.write_text(json.dumps({**summary, "rows": {a: {str(w): v for w, v in r.items()} for a, r in rows.items()}},
                                   indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
