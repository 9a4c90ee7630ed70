"""Benchmark: does a timing table carry over to another machine with the same fingerprint? The
architectures two tables share, each table's latency against the other's: their common speed
ratio (median) and how many architectures lie within ±5% and ±10% of it (a predictor fitted on
one table cannot be more accurate than this on the other's machine).

    .venv/bin/python benchmarks/table_transfer.py A.csv B.csv [--out RESULT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.table import read_table  # noqa: E402
from latency_models.validate import per_architecture  # noqa: E402


def transfer(a: Path, b: Path) -> dict:
    shared = per_architecture(read_table(a)).merge(per_architecture(read_table(b))["median_ms"], left_index=True,
                                                   right_index=True, suffixes=("", "_b"))
    ratio = (shared["median_ms"] / shared["median_ms_b"]).to_numpy()
    common = float(np.median(ratio))
    off = np.abs(ratio / common - 1)
    return {"a": str(a), "b": str(b), "shared": len(ratio), "median_ratio_a_over_b": common,
            "within_5_of_common": float(np.mean(off <= 0.05)), "within_10_of_common": float(np.mean(off <= 0.10)),
            "median_off": float(np.median(off))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = transfer(args.a, args.b)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
