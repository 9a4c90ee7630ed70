"""Benchmark: a fitted latency model on architectures it never saw, measured later in another
process at the model's reference speed (`measure --reference MODEL`): against those timings, and
against the raw ones (at whatever speed the machine had then).

    .venv/bin/python benchmarks/latency_fresh.py MODEL FRESH.csv FRESH.jsonl [--json]

FRESH.jsonl holds the sampled specs (the presets that `measure` adds to FRESH.csv are left out, as
the acceptance check does).
"""
import argparse
import json
import sys
import warnings

import numpy as np
import pandas as pd

from latency_models import LatencyModel, read_table
from latency_models.validate import metrics
from search_space import load_specs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("fresh")
    ap.add_argument("specs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = LatencyModel.load(args.model)
    specs = load_specs(args.specs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = pd.Series(model.predict(specs), index=[s.arch_id for s in specs])
    fresh = read_table(args.fresh)
    if model.reference_ms is None or not np.allclose(fresh["reference_ms"], model.reference_ms):
        sys.exit(f"{args.fresh} is not on {args.model}'s scale; measure it with `measure --reference {args.model}`")
    fresh = fresh[fresh["arch_id"].isin(predicted.index)].drop_duplicates("arch_id")
    pred = predicted[fresh["arch_id"]].to_numpy()
    speed = fresh["anchor_ms"] / model.reference_ms
    out = {"n": len(fresh), "at_reference": metrics(pred, fresh["median_ms"].to_numpy(float)),
           "raw": metrics(pred, fresh["raw_median_ms"].to_numpy(float)),
           "machine_slowdown_vs_reference": {"median": float(speed.median()), "min": float(speed.min()),
                                             "max": float(speed.max())}}
    if args.json:
        print(json.dumps(out))
        return
    for kind in ("at_reference", "raw"):
        m = out[kind]
        print(f"{kind:>12}: {out['n']} fresh archs, within ±5% {m['within_5']:.1%}, ±10% {m['within_10']:.1%}, "
              f"MAPE {m['mape']:.1%}, Kendall tau {m['kendall_tau']:.3f}")
    s = out["machine_slowdown_vs_reference"]
    print(f"the anchor took x{s['median']:.2f} its reference latency (x{s['min']:.2f}-x{s['max']:.2f}) "
          f"while FRESH was measured")


if __name__ == "__main__":
    main()
