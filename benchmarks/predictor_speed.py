"""Benchmark: how many candidate specs a second the latency predictor scores (features + model).

    .venv/bin/python benchmarks/predictor_speed.py runs/latency/cpu-torch.model [--n 20000]
"""
import argparse
import time
import warnings

import numpy as np

from latency_models import LatencyModel
from search_space import SearchSpace, sample


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--img-size", type=int, default=32)
    args = ap.parse_args()
    model = LatencyModel.load(args.model)
    rng = np.random.default_rng(0)
    specs = [sample(rng, SearchSpace(), args.img_size, 3, 10) for _ in range(args.n)]
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.predict(specs)
        rates.append(args.n / (time.perf_counter() - start))
    print(f"{args.n} specs, 3 rounds: median {np.median(rates):,.0f} specs/s (min {min(rates):,.0f})")


if __name__ == "__main__":
    main()
