"""Benchmark: the default onnxruntime calibration as `run` performs it (n sampled architectures
plus the presets, exported as `export` ships them, timed, fitted), end to end and in one process
tree, so its wall time is what a user waits. Keeps the table and the fit report for the latency
check (`../shared/checks/check_latency.py`).

    .venv/bin/python benchmarks/ort_calibration.py [--n 150] [--seed 0] [--out benchmarks/results/ort_calibration]
"""
import argparse
import json
import time
from pathlib import Path

from latency_models.calibrate import calibrate
from latency_models.measure import cpu_model
from nas.config import CALIBRATION_ARCHS
from search_space import SearchSpace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=CALIBRATION_ARCHS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_calibration"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.perf_counter(), []

    def progress(row: dict, timings: int) -> None:
        rows.append(row)
        print(f"{len(rows)}/{timings} measured, {time.perf_counter() - t0:.0f} s, {row['median_ms']:.3f} ms "
              f"{row['short']}", flush=True)

    model_path, report = calibrate(32, 3, 10, args.out, SearchSpace(), runtime="onnxruntime", n=args.n,
                                   seed=args.seed, on_row=progress)
    wall = time.perf_counter() - t0
    summary = {"machine": cpu_model(), "date": time.strftime("%Y-%m-%d"), "n": args.n, "seed": args.seed,
               "rows": len(rows), "wall_s": wall, "model": model_path.name, "fit": report}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    if report:
        (args.out / "fit.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "fit"}, indent=1))
    if report:
        print("held-out within ±10%:", report["within_10"], "tau:", report["kendall_tau"])


if __name__ == "__main__":
    main()
