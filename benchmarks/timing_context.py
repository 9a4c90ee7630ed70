"""Benchmark: one trained model's latency relative to the anchor, timed as `train` and `export` time
it (alone with the anchor, interleaved) and as a latency table times it (in a chunk of 16 table
architectures, interleaved), each put on the table's scale, with 0, 1 or 2 untimed calls of the
same model before each timed one (0: how tables were timed before; `measure`'s default is
`latency_models.settings.WARM_CALLS`). Rounds of every context and protocol in turn, medians.
Shows how much the timing context, not the model, moves a figure, and which protocol removes
it. Also compares the trained weights with seeded ones.

    .venv/bin/python benchmarks/timing_context.py runs/demo 8 runs/latency/auto-....csv runs/latency/auto-....model \
        [--sweeps 100] [--repeats 5] [--out benchmarks/results/timing_context.json]
"""
import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
import torch

from latency_models import LatencyModel
from latency_models.measure import (anchor_spec, call_times, deployed_model, deployed_runner, interleaved_stats,
                                     runtime_runner)
from nas.final import load_trained
from search_space import ArchSpec, deploy


def ratio_to_anchor(runners: dict, sweeps: int, warm_calls: int) -> float:
    stats = interleaved_stats(*call_times(runners, sweeps, warm_calls=warm_calls))
    return stats["model"]["raw_median_ms"] / stats["anchor"]["raw_median_ms"]


def contexts_of(args: argparse.Namespace, runtime: str) -> tuple[ArchSpec, dict[str, dict]]:
    """The trained model's spec, and the runners of each context: the trained model beside the
    anchor alone, among 15 table architectures, and its seeded weights beside the anchor."""
    trained = load_trained(args.run, args.trial)[0].eval()
    spec = trained.spec
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    anchor = deployed_runner(anchor_spec(spec), runtime)[0]
    target = runtime_runner(deploy(trained), x, runtime)
    seeded = runtime_runner(deployed_model(spec), x, runtime)
    others = pd.read_csv(args.table).drop_duplicates("arch_id").sample(15, random_state=0)
    crowd = {a: deployed_runner(ArchSpec.from_json(s), runtime)[0]
             for a, s in zip(others["arch_id"], others["spec_json"])}
    return spec, {"alone with the anchor (train, export)": {"anchor": anchor, "model": target},
                  "in a chunk of 16 (a table)": {"anchor": anchor, "model": target, **crowd},
                  "seeded weights, alone with the anchor": {"anchor": anchor, "model": seeded}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("trial", type=int)
    ap.add_argument("table")
    ap.add_argument("latency_model")
    ap.add_argument("--sweeps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5, help="rounds of every context and protocol, in turn")
    ap.add_argument("--out", default="benchmarks/results/timing_context.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = LatencyModel.load(args.latency_model)
    spec, contexts = contexts_of(args, model.runtime)
    rows = [{"round": r, "context": label, "warm_calls": w,
             "model_over_anchor": ratio_to_anchor(runners, args.sweeps, w)}
            for r in range(args.repeats) for label, runners in contexts.items() for w in (0, 1, 2)]
    table = pd.DataFrame(rows).groupby(["warm_calls", "context"])["model_over_anchor"].median().unstack()
    by_protocol = {w: {"median_model_over_anchor": table.loc[w].to_dict(),
                       "chunk_over_alone": float(table.loc[w].iloc[1] / table.loc[w].iloc[0])} for w in table.index}
    for w, summary in by_protocol.items():
        print(f"warm calls {w}: " + ", ".join(f"{c} {v * model.reference_ms:.4f} ms" for c, v in
                                              summary["median_model_over_anchor"].items())
              + f"; chunk/alone {summary['chunk_over_alone']:.3f}")
    predicted = float(model.predict([spec])[0])
    print(f"predicted: {predicted:.4f} ms ({spec.short()})")
    Path(args.out).write_text(json.dumps({"spec": spec.short(), "predicted_ms": predicted,
                                          "reference_ms": model.reference_ms, "sweeps": args.sweeps,
                                          "by_protocol": by_protocol, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
