"""Benchmark: a preset's validation accuracy at each of the demo's rungs (digits, `--epochs 3`) with
the BatchNorm running averages it trained with, and with them re-estimated as the search's proxy
evaluation now does (`evaluators.batch_norms`). Weights are the same in both columns: the
training is run without validation, then evaluated both ways.

    .venv/bin/python benchmarks/batch_norm_statistics.py [--out benchmarks/results/batch_norm_statistics.json]
"""
import argparse
import json
from pathlib import Path

import torch

from evaluators.batch_norms import reestimate_batch_norms, statistics_images
from evaluators.data import load_dataset
from evaluators.recipes import PROXY_RECIPE
from evaluators.train import Normalizer, accuracy, train
from nas.dispatch import rung_train_config
from nas.rungs import Rungs
from search_space.presets import PRESETS, SEARCH_SCALE, presets

DEMO_EPOCHS = 3  # the Makefile's demo: --epochs 3


def both_ways(spec, data: tuple, budget: float, rungs: Rungs) -> dict:
    """Validation accuracy after `budget` epochs, with the running averages and re-estimated."""
    x, y, x_val, y_val, mean, std = data
    cfg = rung_train_config(rungs, batch_size=PROXY_RECIPE["batch_size"], lr=PROXY_RECIPE["lr"])
    res = train(spec, x, y, None, None, cfg, mean=mean, std=std, until_epochs=budget)
    norm = Normalizer(mean, std, spec.img_size)
    running = accuracy(res.model, x_val, y_val, norm)
    reestimate_batch_norms(res.model, statistics_images(x, cfg.seed), norm, cfg.batch_size)
    return {"epochs": budget, "steps": res.steps, "running_averages": running,
            "reestimated": accuracy(res.model, x_val, y_val, norm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/batch_norm_statistics.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    digits = load_dataset("digits")
    data = (*digits.holdout(seed=0), *digits.channel_stats())
    rungs = Rungs(PROXY_RECIPE["base_epochs"], DEMO_EPOCHS, PROXY_RECIPE["eta"])
    specs = presets(digits.img_size, digits.in_chans, digits.num_classes, SEARCH_SCALE, SEARCH_SCALE)
    rows = []
    for name in PRESETS:
        for budget in rungs.budgets:
            row = {"preset": name, **both_ways(specs[name], data, budget, rungs)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).write_text(json.dumps({"data": "digits", "rungs": rungs.budgets, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
