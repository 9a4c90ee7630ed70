"""Benchmark: the predictor's accuracy against the number of architectures it is fitted on, on
committed timing tables: what a calibration of about 150 architectures can reach. For each
training size and seed, fit on that many random architectures, test on all the others.

    .venv/bin/python benchmarks/latency_fit_size.py TABLE.csv [TABLE.csv ...] [--sizes 117 156 324] \
        [--out benchmarks/results/latency_fit_size.json]
"""
import argparse
import json
from pathlib import Path

import numpy as np

from latency_models import LatencyModel, read_table
from latency_models.table import select_fingerprint
from latency_models.validate import metrics, per_architecture
from search_space import ArchSpec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--sizes", type=int, nargs="+", default=[117, 156, 324])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/latency_fit_size.json")
    args = ap.parse_args()
    results = []
    for table in args.tables:
        rows, fp = select_fingerprint(read_table(Path(table)), None)
        archs = per_architecture(rows)
        specs = [ArchSpec.from_json(s) for s in archs["spec_json"]]
        y, x = archs["median_ms"].to_numpy(float), LatencyModel(fingerprint=fp).feature_matrix(specs)
        for size in args.sizes:
            within = []
            for seed in range(args.seeds):
                order = np.random.default_rng(seed).permutation(len(y))
                train, test = order[:size], order[size:]
                model = LatencyModel(fingerprint=fp).fit([specs[i] for i in train], y[train], seed=seed)
                within.append(metrics(model.predict_features(x[test]), y[test])["within_10"])
            results.append({"table": table, "architectures": len(y), "fitted_on": size, "within_10": within})
            print(f"{table}: fitted on {size} of {len(y)}: within ±10% on the rest "
                  f"{', '.join(f'{w:.1%}' for w in within)} (median {np.median(within):.1%})", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
