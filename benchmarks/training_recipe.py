"""Our training loop against a plain timm loop, on the deit-tiny preset at search scale (issue 19).

The recipe: 15 epochs on the whole training split, AdamW lr 1e-3, weight decay 0.05, batch 128,
label smoothing 0.1, 10% warm-up; test accuracy on the test split (also read after every epoch).

  timm-loop           timm's ViT (img 32, patch 4, width 96, depth 6, 3 heads), torchvision per-sample
                      RandomCrop(32, padding=4, reflect) and flip in a DataLoader, timm's AdamW
                      groups, torch's OneCycleLR: what a new user writes.
  legacy              `evaluators/train.py` as it was at --legacy-rev (one shift per batch, zero
                      padding, gradient clipping at 1.0), loaded from git.
  per-sample-zeros    today's loop, per-sample crop with zero padding, clipping at 1.0
  per-sample-clip     today's loop (per-sample reflect crop and flip), clipping at 1.0
  ours                today's loop with its defaults (no clipping)
  ours-strong         ours + mixup 0.8, cutmix 1.0 and RandAugment rand-m9-mstd0.5 (final-training options)

Trainings run --jobs at a time, one thread each; each finished one is appended to
OUT/runs.jsonl at once and never redone. Before them, `throughput` times proxy-style epochs
(1,280 images, batch 64, one thread) of the legacy loop, ours and the timm loop, interleaved in
shuffled rounds, and writes OUT/throughput.json.

    .venv/bin/python benchmarks/training_recipe.py --data ../shared/data/cifar10.npz \
        --out benchmarks/results/training_recipe [--jobs 2] [--variants ours,timm-loop]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.jobs import read_jsonl, run_jobs  # noqa: E402
from evaluators import train as train_module  # noqa: E402
from evaluators.data import load_dataset  # noqa: E402
from evaluators.train import Normalizer, TrainConfig, accuracy  # noqa: E402
from search_space import preset  # noqa: E402
from search_space.presets import SEARCH_SCALE  # noqa: E402

RECIPE = dict(epochs=15, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_fraction=0.1, label_smoothing=0.1)
VARIANTS = {
    "timm-loop": {},
    "legacy": {},
    "per-sample-zeros": {"grad_clip": 1.0},
    "per-sample-clip": {"grad_clip": 1.0},
    "ours": {},
    "ours-strong": {"mixup": 0.8, "cutmix": 1.0, "randaugment": "rand-m9-mstd0.5"},
}


def zero_padded_crop(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Per-sample crop and flip as `augment` draws them, from a zero-padded image."""
    pad = max(1, x.shape[-1] // 8)
    side = x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (2, x.shape[0], 1), generator=gen)
    rows, cols = torch.arange(side) + shifts[0], torch.arange(side) + shifts[1]
    if flip:
        cols = torch.where(torch.rand(x.shape[0], 1, generator=gen) < 0.5, cols.flip(-1), cols)
    batch = torch.arange(x.shape[0])[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def legacy_train_module(rev: str):
    """`evaluators/train.py` at git revision `rev`, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:evaluators/train.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "legacy_train.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("legacy_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["legacy_train"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timm_vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=96,
                             depth=6, num_heads=3, num_classes=10)


def train_timm_loop(x, y, x_test, y_test, norm: Normalizer, epochs: float, seed: int,
                    evaluate: bool = True, batch_size: int = RECIPE["batch_size"]) -> list[float]:
    """The plain loop: timm's model and optimizer groups, torchvision per-sample transforms."""
    from timm.optim import create_optimizer_v2
    from torchvision.transforms import v2

    torch.manual_seed(seed)
    random.seed(seed)
    model = timm_vit()
    transform = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip()])
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=batch_size, shuffle=True,
                                         collate_fn=lambda items: (torch.stack([transform(i) for i, _ in items]),
                                                                   torch.stack([t for _, t in items])))
    total = max(1, round(epochs * len(loader)))
    opt = create_optimizer_v2(model, "adamw", lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=total,
                                                pct_start=RECIPE["warmup_fraction"])
    curve, step = [], 0
    for _ in range(max(1, int(np.ceil(epochs)))):
        model.train()
        for xb, yb in loader:
            if step >= total:
                break
            loss = F.cross_entropy(model(norm(xb)), yb, label_smoothing=RECIPE["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if evaluate:
            curve.append(accuracy(model, x_test, y_test, norm))
    return curve


@contextlib.contextmanager
def augment_replaced(fn):
    saved = train_module.augment
    train_module.augment = fn
    try:
        yield
    finally:
        train_module.augment = saved


def run_variant(name: str, data_path: str, legacy_rev: str, seed: int, epochs: float) -> dict:
    torch.set_num_threads(1)
    data = load_dataset(f"npz:{data_path}")
    mean, std = data.channel_stats()
    spec = preset("deit-tiny", data.img_size, data.in_chans, data.num_classes, SEARCH_SCALE, SEARCH_SCALE)
    norm = Normalizer(mean, std, spec.img_size)
    start = time.perf_counter()
    if name == "timm-loop":
        curve = train_timm_loop(data.x_train, data.y_train, data.x_test, data.y_test, norm, epochs, seed)
    else:
        module = legacy_train_module(legacy_rev) if name == "legacy" else train_module
        cfg = module.TrainConfig(**{**RECIPE, "epochs": epochs}, seed=seed, threads=1, **VARIANTS[name])
        swap = augment_replaced(zero_padded_crop) if name == "per-sample-zeros" else contextlib.nullcontext()
        with swap:
            curve = module.train(spec, data.x_train, data.y_train, data.x_test, data.y_test, cfg, mean, std).history
    return {"variant": name, "seed": seed, "epochs": epochs, "test_acc": curve[-1], "test_curve": curve,
            "train_s": round(time.perf_counter() - start, 1), "spec": spec.short()}


def throughput(data_path: str, legacy_rev: str, rounds: int, n: int = 1280) -> dict:
    """Images per second of one proxy-style epoch (batch 64, one thread), the loops interleaved."""
    torch.set_num_threads(1)
    data = load_dataset(f"npz:{data_path}")
    mean, std = data.channel_stats()
    x, y = data.x_train[:n], data.y_train[:n]
    spec = preset("deit-tiny", data.img_size, data.in_chans, data.num_classes, SEARCH_SCALE, SEARCH_SCALE)
    norm = Normalizer(mean, std, spec.img_size)
    legacy = legacy_train_module(legacy_rev)
    loops = {
        "legacy": lambda: legacy.train(spec, x, y, None, None, legacy.TrainConfig(epochs=1, batch_size=64), mean, std),
        "ours": lambda: train_module.train(spec, x, y, None, None, TrainConfig(epochs=1, batch_size=64), mean, std),
        "timm-loop": lambda: train_timm_loop(x, y, None, None, norm, 1, 0, evaluate=False, batch_size=64),
    }
    times: dict[str, list[float]] = {k: [] for k in loops}
    rng = random.Random(0)
    for r in range(rounds):
        for name in rng.sample(list(loops), len(loops)):
            t = time.perf_counter()
            loops[name]()
            times[name].append(time.perf_counter() - t)
        print(f"throughput round {r + 1}/{rounds}", file=sys.stderr)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"images": n, "batch": 64, "rounds": rounds, "threads": 1,
            "images_per_s": {k: round(n / v, 1) for k, v in med.items()},
            "ours_vs_legacy": round(med["legacy"] / med["ours"], 3),
            "ours_vs_timm_loop": round(med["timm-loop"] / med["ours"], 3),
            "per_round_s": {k: [round(t, 3) for t in v] for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"), help="npz dataset path")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_recipe"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--epochs", type=float, default=RECIPE["epochs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each")
    ap.add_argument("--legacy-rev", default="7107684", help="git revision of the legacy training loop")
    ap.add_argument("--rounds", type=int, default=5, help="throughput rounds (0: skip)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.rounds and not (out / "throughput.json").exists():
        result = throughput(args.data, args.legacy_rev, args.rounds)
        (out / "throughput.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "per_round_s"}))
    runs = out / "runs.jsonl"
    done = {(r["variant"], r["seed"], r["epochs"]) for r in read_jsonl(runs)}
    todo = [(v, args.data, args.legacy_rev, args.seed, args.epochs) for v in args.variants.split(",")
            if (v, args.seed, args.epochs) not in done]
    run_jobs(todo, run_variant, args.jobs, runs,
             lambda r: f"{r['variant']}: test {r['test_acc']:.4f} in {r['train_s']:.0f} s")


if __name__ == "__main__":
    main()
