"""What a user would pick instead of a search: timm's small vision transformers as timm builds
them, trained with the final recipe on the search's training part and exported as a timm user
would (`torch.onnx.export`), so that the proof compares them with the searched models like for like.

    .venv/bin/python benchmarks/timm_baselines.py RUN_DIR NAME --epochs 15 --out DIR
        # trains one baseline (resumable); `cifar10_vs_presets.py` runs it for each of BASELINES
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.data import load_dataset  # noqa: E402
from evaluators.recipes import FINAL_RECIPE  # noqa: E402
from evaluators.train import Normalizer, TrainConfig, accuracy, train_model, training_curve  # noqa: E402
from latency_models.measure import runtime_runner  # noqa: E402
from nas.rundir import run_config  # noqa: E402
from search_space import count_params  # noqa: E402

# name: (timm model, input side, timm keyword arguments); the CIFAR images are resized to the
# input side (bilinear, antialiased) as every model's input normalisation does
BASELINES = {
    "timm-efficientvit_m0": ("efficientvit_m0", 64, {"img_size": 64}),
    "timm-mobilevit_xxs": ("mobilevit_xxs", 64, {}),
    "deit-pico": ("vit_tiny_patch16_224", 32, {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6,
                                               "num_heads": 3}),
}


def make_baseline(name: str, num_classes: int, in_chans: int = 3) -> torch.nn.Module:
    import timm

    timm_name, _, kwargs = BASELINES[name]
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def input_size(name: str) -> int:
    return BASELINES[name][1]


def baseline_dir(out: Path, name: str) -> Path:
    return Path(out) / "baselines" / name


def train_baseline(run: Path, name: str, epochs: float, out: Path) -> dict:
    """Train baseline `name` as `etnas train RUN --holdout` trains a trial (the run's data, split
    and seed, FINAL_RECIPE, one thread), resuming from its checkpoint; its report, also written
    to DIR/baselines/NAME/final.json."""
    cfg = run_config(run)
    data = load_dataset(cfg["dataset"])
    mean, std = data.channel_stats()
    x, y, x_val, y_val = data.holdout(seed=cfg["seed"])
    side = input_size(name)
    folder = baseline_dir(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    tcfg = TrainConfig(**FINAL_RECIPE, epochs=epochs, seed=cfg["seed"], threads=1)
    t0 = time.perf_counter()
    res = train_model(lambda: make_baseline(name, data.num_classes, data.in_chans), x, y, x_val, y_val, tcfg,
                      img_size=side, num_classes=data.num_classes, mean=mean, std=std,
                      checkpoint=folder / "checkpoint.pt")
    model = res.model.cpu().eval()
    torch.save(model.state_dict(), folder / "model.pt")
    report = {"name": name, "timm": BASELINES[name][0], "img_size": side, "short": f"timm {BASELINES[name][0]} "
              f"{side}px", "test_acc": accuracy(model, data.x_test, data.y_test, Normalizer(mean, std, side)),
              "val_curve": res.history, "epochs": epochs, "train_s": res.train_s,
              "wall_s": time.perf_counter() - t0, "params": count_params(model), "dataset": cfg["dataset"],
              "holdout": True, "trained_examples": len(y), "recipe": dataclasses.asdict(tcfg)}
    (folder / "final.json").write_text(json.dumps(report, indent=1))
    return report


def finished_baselines(previous: str | Path | None, names: list[str], epochs: float, dataset: str, seed: int,
                       num_classes: int, in_chans: int) -> dict[str, tuple[torch.nn.Module, dict]]:
    """The baselines under `previous` (an earlier results folder) trained as `train_baseline` would
    train them now: the same model (timm name, input side, parameters), recipe, data and seed, the
    validation part held out; each as an untrained model and its report. Their accuracy stands; a
    latency does not depend on the weights, so they are timed untrained."""
    ours = training_curve({**FINAL_RECIPE, "epochs": epochs, "seed": seed})
    found = {}
    for name in names if previous else []:
        path = baseline_dir(previous, name) / "final.json"
        report = json.loads(path.read_text()) if path.exists() else {}
        recipe = report.get("recipe")
        if not (recipe and report.get("dataset") == dataset and report.get("holdout") and training_curve(recipe) == ours):
            continue
        model = make_baseline(name, num_classes, in_chans)
        if (report.get("timm"), report.get("img_size"), report.get("params")) == (
                BASELINES[name][0], input_size(name), count_params(model)):
            found[name] = (model.eval(), report)
    return found


def trained_baseline(out: Path, name: str, num_classes: int, in_chans: int) -> tuple[torch.nn.Module, dict]:
    """The trained baseline and its report (after `train_baseline`)."""
    folder = baseline_dir(out, name)
    model = make_baseline(name, num_classes, in_chans)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval(), json.loads((folder / "final.json").read_text())


def baseline_runner(model: torch.nn.Module, x: torch.Tensor, runtime: str) -> Callable[[], None]:
    """One batch-1 call of a baseline in `runtime`: eager in eval, or the file
    `torch.onnx.export` writes, in onnxruntime on one thread."""
    if runtime == "torch":
        return runtime_runner(model, x, runtime)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, verbose=False)
        return runtime_runner(model, x, runtime, exported=path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the search's run directory (its data, split and seed)")
    ap.add_argument("name", choices=sorted(BASELINES))
    ap.add_argument("--epochs", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    report = train_baseline(args.run, args.name, args.epochs, args.out)
    print(f"{args.name}: test {report['test_acc']:.4f} after {report['train_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
