"""Benchmark: a fitted latency model on architectures it never saw, measured later in another
process: against the raw timings, and against the timings corrected by the machine's speed at the
time (the anchor timed with each chunk, over the anchor's median in the model's own table).

    .venv/bin/python benchmarks/latency_fresh.py MODEL TABLE.csv FRESH.csv FRESH.jsonl [--json]

TABLE.csv is the table the model was fitted on; FRESH.jsonl the sampled specs (the presets that
`measure` adds to FRESH.csv are left out, as the acceptance check does).
"""
import argparse
import json
import warnings

import numpy as np
import pandas as pd

from latency_models import LatencyModel, read_table
from latency_models.validate import metrics, speed_factors
from search_space import load_specs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("table")
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
    fresh = fresh[fresh["arch_id"].isin(predicted.index)].drop_duplicates("arch_id")
    pred = predicted[fresh["arch_id"]].to_numpy()
    raw = fresh["median_ms"].to_numpy(float)
    out = {"n": len(raw), "raw": metrics(pred, raw)}
    speed = speed_factors(fresh, float(read_table(args.table)["anchor_ms"].median()))
    if speed is not None:
        speed = speed.to_numpy(float)
        out["speed_corrected"] = metrics(pred, raw / speed)
        out["speed_vs_table"] = {"median": float(np.median(speed)), "min": float(speed.min()), "max": float(speed.max())}
    if args.json:
        print(json.dumps(out))
        return
    for kind in ("raw", "speed_corrected"):
        if kind in out:
            m = out[kind]
            print(f"{kind:>15}: {out['n']} fresh archs, within ±5% {m['within_5']:.1%}, ±10% {m['within_10']:.1%}, "
                  f"MAPE {m['mape']:.1%}, Kendall tau {m['kendall_tau']:.3f}")
    if "speed_vs_table" in out:
        s = out["speed_vs_table"]
        print(f"machine speed during FRESH vs the table (anchor): median x{s['median']:.2f} "
              f"(x{s['min']:.2f}-x{s['max']:.2f})")


if __name__ == "__main__":
    main()
