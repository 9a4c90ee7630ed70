"""Benchmark: one trained model's latency relative to the anchor, timed as `train` and `export` time
it (alone with the anchor, interleaved) and as a latency table times it (in a chunk of 16 table
architectures, interleaved), each put on the table's scale. Shows how much the timing context,
not the model, moves a figure. Also compares the trained weights with seeded ones.

    .venv/bin/python benchmarks/timing_context.py runs/demo 8 runs/latency/auto-....csv runs/latency/auto-....model \
        [--sweeps 100] [--out benchmarks/results/timing_context.json]
"""
import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
import torch

from latency_models import LatencyModel
from latency_models.measure import anchor_spec, deployed_model, deployed_runner, runtime_runner, time_interleaved
from nas.final import load_trained
from search_space import ArchSpec, deploy


def ratio_to_anchor(runners: dict, sweeps: int) -> float:
    stats = time_interleaved(runners, sweeps)
    return stats["model"]["raw_median_ms"] / stats["anchor"]["raw_median_ms"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("trial", type=int)
    ap.add_argument("table")
    ap.add_argument("latency_model")
    ap.add_argument("--sweeps", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/timing_context.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    trained = load_trained(args.run, args.trial)[0].eval()
    spec, model = trained.spec, LatencyModel.load(args.latency_model)
    runtime = model.runtime
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    anchor = deployed_runner(anchor_spec(spec), runtime)[0]
    target = runtime_runner(deploy(trained), x, runtime)
    seeded = runtime_runner(deployed_model(spec), x, runtime)
    others = pd.read_csv(args.table).drop_duplicates("arch_id").sample(15, random_state=0)
    crowd = {a: deployed_runner(ArchSpec.from_json(s), runtime)[0]
             for a, s in zip(others["arch_id"], others["spec_json"])}
    contexts = [("alone with the anchor (train, export)", {"anchor": anchor, "model": target}),
                ("in a chunk of 16 (a table)", {"anchor": anchor, "model": target, **crowd}),
                ("seeded weights, alone with the anchor", {"anchor": anchor, "model": seeded}),
                ("alone with the anchor, again", {"anchor": anchor, "model": target})]
    rows = []
    for label, runners in contexts:
        r = ratio_to_anchor(runners, args.sweeps)
        rows.append({"context": label, "model_over_anchor": r, "ms_on_table_scale": r * model.reference_ms})
        print(f"{label:40s} model/anchor {r:.4f}  {r * model.reference_ms:.4f} ms on the table's scale")
    predicted = float(model.predict([spec])[0])
    print(f"predicted: {predicted:.4f} ms ({spec.short()})")
    Path(args.out).write_text(json.dumps({"spec": spec.short(), "predicted_ms": predicted, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
