"""Benchmark: int8 against fp32 latency in onnxruntime, per norm type and per attention, from an int8
and an fp32 timing table of the same architectures on the same machine (`measure --precision`).
Raw medians (each table's own session), so the ratio is what a deployment would see.

    .venv/bin/python benchmarks/int8_speed.py INT8.csv FP32.csv [--out RESULT.json]
"""
import argparse
import json
from pathlib import Path

import pandas as pd

from latency_models.table import read_table


def latencies(path: str) -> pd.DataFrame:
    table = read_table(path)
    return table.groupby("arch_id").agg(ms=("raw_median_ms", "median"), spec=("spec_json", "first"))


def only(spec_json: str, key: str) -> str:
    """The stages' common value of `key` ("mixed" where they differ)."""
    values = {stage[key] for stage in json.loads(spec_json)["stages"]}
    return values.pop() if len(values) == 1 else "mixed"


def ratios_by(both: pd.DataFrame, key: str) -> pd.DataFrame:
    by = both.assign(group=[only(s, key) for s in both["spec"]]).groupby("group")["ratio"]
    return pd.DataFrame({"archs": by.size(), "median": by.median(), "p10": by.quantile(0.1),
                         "p90": by.quantile(0.9), "min": by.min()}).round(3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("int8")
    ap.add_argument("fp32")
    ap.add_argument("--out", default="benchmarks/results/latency_int8_1205/int8_speed.json")
    args = ap.parse_args()
    int8, fp32 = latencies(args.int8), latencies(args.fp32)
    both = fp32.join(int8["ms"].rename("int8_ms"), how="inner")
    both["ratio"] = both["int8_ms"] / both["ms"]
    result = {"archs": len(both), "median": round(float(both["ratio"].median()), 3),
              "int8_faster": int((both["ratio"] < 1).sum())}
    print(f"{result['archs']} architectures: int8/fp32 median {result['median']}, int8 faster for "
          f"{result['int8_faster']}")
    for key in ("norm", "attention"):
        table = ratios_by(both, key)
        print(f"\nint8/fp32 latency by {key}\n{table.to_string()}")
        result[key] = table.to_dict(orient="index")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
