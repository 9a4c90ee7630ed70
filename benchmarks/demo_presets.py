"""Benchmark: the seed presets on the demo's digits, trained alone through the demo search's rungs
(`--epochs 3`, default base epochs and eta) by the search's own rung configuration, under another
batch size, learning rate or patch: validation accuracy at each rung, the first and last training
loss, and the seconds taken. Shows which presets the demo can train above chance, and why the
others cannot.

    .venv/bin/python benchmarks/demo_presets.py deit-tiny,slab-deit,efficientvit-m0 '{}' '{"batch_size": 16}'
    .venv/bin/python benchmarks/demo_presets.py deit-tiny '{"patch": 1}' '{"patch": 2}' '{"patch": 4}'

Each further argument is one setting as JSON: `batch_size`, `lr` (the proxy's), `patch` (replaces
the preset's), `epochs` (the top rung). One JSON line per preset and setting.
"""
import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from evaluators.data import load_dataset
from evaluators.recipes import PROXY_RECIPE
from evaluators.train import train
from nas.dispatch import rung_train_config
from nas.rungs import Rungs
from search_space.presets import SEARCH_SCALE, presets

DEMO_EPOCHS = 3  # the Makefile's demo: --epochs 3


def through_rungs(spec, data: tuple, setting: dict) -> dict:
    """Train `spec` rung by rung, continuing from its checkpoint as a search's worker does."""
    rungs = Rungs(PROXY_RECIPE["base_epochs"], setting.get("epochs", DEMO_EPOCHS), PROXY_RECIPE["eta"])
    cfg = rung_train_config(rungs, batch_size=setting.get("batch_size", PROXY_RECIPE["batch_size"]),
                            lr=setting.get("lr", PROXY_RECIPE["lr"]))
    x, y, x_val, y_val, mean, std = data
    losses, accs, t0 = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for budget in rungs.budgets:
            res = train(spec, x, y, x_val, y_val, cfg, mean=mean, std=std, until_epochs=budget,
                        checkpoint=Path(tmp) / "checkpoint.pt", on_step=lambda _i, _n, loss: losses.append(loss))
            accs.append(round(res.val_acc, 3))
    return {"budgets": [round(b, 2) for b in rungs.budgets], "val_acc": accs,
            "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)], "s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("presets", help="preset names separated by commas")
    ap.add_argument("settings", nargs="+", type=json.loads, help="one JSON object per setting ('{}': the demo's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    digits = load_dataset("digits")
    data = (*digits.holdout(seed=0), *digits.channel_stats())
    specs = presets(digits.img_size, digits.in_chans, digits.num_classes, SEARCH_SCALE, SEARCH_SCALE)
    for setting in args.settings:
        for name in args.presets.split(","):
            spec = specs[name]
            if "patch" in setting:
                spec = dataclasses.replace(spec, patch=setting["patch"])
            print(json.dumps({"preset": name, "short": spec.short(), "setting": setting,
                              **through_rungs(spec, data, setting)}), flush=True)


if __name__ == "__main__":
    main()
