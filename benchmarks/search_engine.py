"""Benchmarks of the search engine on CIFAR-10 (issue: search engine):

  fidelity  Kendall tau between proxy accuracy and accuracy after 5x longer training, over 12
            architectures (6 presets + 6 sampled), for the proxy budget used by the searches;
            also seconds per proxy evaluation.
  samplers  NSGA-II, TPE and random search, 3 seeds each: hypervolume of the feasible front
            (reference point: accuracy 0 at the target latency) at equal numbers of proxy trainings.
  workers   wall-clock of the same search with 1 and with 2 Ray workers.

    .venv/bin/python benchmarks/search_engine.py --latency-model runs/latency/cpu-torch.model \
        [--data ../shared/data/cifar10.npz] [--parts fidelity,samplers,workers] [--out benchmarks/results/search]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from evaluators.data import load_dataset
from evaluators.proxy import evaluate_proxy
from evaluators.train import TrainConfig
from search_space import SearchSpace, presets, sample
from search_space.presets import SEARCH_SCALE

ROOT = Path(__file__).resolve().parents[1]

PROXY = {"epochs": 1, "subset": 0.1}  # 1 epoch on 10% of the training split: ~1,800 images


def hypervolume(points: list[tuple[float, float]], target_ms: float) -> float:
    """Area dominated by (ms, acc) points with ms <= target, against the reference (target, 0)."""
    front, best = [], -1.0
    for ms, acc in sorted(p for p in points if p[0] <= target_ms):
        if acc > best:
            front.append((ms, acc))
            best = acc
    edges = [ms for ms, _ in front[1:]] + [target_ms]
    return float(sum(acc * (nxt - ms) for (ms, acc), nxt in zip(front, edges)))


def _proxy(args):
    spec_json, data, cfg = args
    return evaluate_proxy(spec_json, data, cfg)


def fidelity(data_name: str, out: Path) -> dict:
    data = load_dataset(data_name)
    tr, val = data.split(0.1, seed=0)
    mean, std = data.channel_stats()
    arrays = (data.x_train[tr], data.y_train[tr], data.x_train[val], data.y_train[val], mean, std)
    shape = (data.img_size, data.in_chans, data.num_classes)
    rng = np.random.default_rng(123)
    specs = list(presets(*shape, SEARCH_SCALE, SEARCH_SCALE).values()) + [sample(rng, SearchSpace(), *shape)
                                                                           for _ in range(6)]
    rows = []
    for scale in (1, 5):
        cfg = TrainConfig(epochs=PROXY["epochs"] * scale, subset=PROXY["subset"], seed=0, threads=1)
        with ProcessPoolExecutor(2) as pool:
            for spec, res in zip(specs, pool.map(_proxy, [(s.to_json(), arrays, cfg) for s in specs])):
                rows.append({"short": spec.short(), "scale": scale, **{k: res.get(k) for k in ("val_acc", "train_s", "failure")}})
                print(f"  x{scale} {res.get('val_acc')!s:>8.6} {res.get('train_s', 0):7.1f}s {spec.short()[:70]}", flush=True)
    df = pd.DataFrame(rows)
    short, long = df[df.scale == 1], df[df.scale == 5]
    tau = float(kendalltau(short["val_acc"].to_numpy(), long["val_acc"].to_numpy())[0])
    res = {"proxy": PROXY, "n_archs": len(specs), "kendall_tau": tau,
           "median_proxy_s": float(short["train_s"].median()), "median_5x_s": float(long["train_s"].median()),
           "rows": rows}
    (out / "fidelity.json").write_text(json.dumps(res, indent=1))
    print(f"fidelity: tau {tau:.3f} over {len(specs)} archs; proxy median {res['median_proxy_s']:.1f} s, "
          f"5x median {res['median_5x_s']:.1f} s", flush=True)
    return res


def search(name: str, out: Path, args, sampler: str, seed: int, workers: int, trials: int) -> float:
    cmd = [sys.executable, str(ROOT / "search.py"), "run", "--name", name, "--runs-dir", str(out / "runs"),
           "--dataset", f"npz:{args.data}", "--target-ms", args.target, "--latency-model", args.latency_model,
           "--trials", str(trials), "--workers", str(workers), "--sampler", sampler, "--seed", str(seed),
           "--epochs", str(PROXY["epochs"]), "--subset", str(PROXY["subset"]), "--no-prune"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def samplers(args, out: Path) -> dict:
    runs = {}
    for sampler in ("nsga2", "tpe", "random"):
        for seed in (0, 1, 2):
            name = f"{sampler}-s{seed}"
            wall = search(name, out, args, sampler, seed, 2, args.trials)
            trials = pd.read_csv(out / "runs" / name / "trials.csv")
            target = json.loads((out / "runs" / name / "config.json").read_text())["target_ms"]
            runs[name] = {"trials": trials, "target": target, "wall_s": wall}
            print(f"  {name}: {wall / 60:.1f} min, {int((trials.state == 'COMPLETE').sum())} trained", flush=True)
    k = min(int((r["trials"].state == "COMPLETE").sum()) for r in runs.values())
    table = {}
    for name, r in runs.items():
        trained = r["trials"][r["trials"].state == "COMPLETE"].sort_values("number").head(k)
        table[name] = {"hypervolume": hypervolume(list(zip(trained.pred_ms, trained.val_acc)), r["target"]),
                       "trained": k, "trials": len(r["trials"]), "wall_s": r["wall_s"],
                       "infeasible": int((r["trials"].state == "INFEASIBLE").sum()), "target_ms": r["target"]}
    summary = {s: {"median_hv": float(np.median([v["hypervolume"] for n, v in table.items() if n.startswith(s)]))}
               for s in ("nsga2", "tpe", "random")}
    res = {"equal_trainings": k, "runs": table, "summary": summary, "reference_point": "(target ms, accuracy 0)"}
    (out / "samplers.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(summary), flush=True)
    return res


def workers(args, out: Path) -> dict:
    res = {w: search(f"workers-{w}", out, args, "random", 7, w, 12) for w in (1, 2)}
    res = {"wall_s": res, "speedup": res[1] / res[2]}
    (out / "workers.json").write_text(json.dumps(res, indent=1))
    print(f"workers: 1 -> {res['wall_s'][1] / 60:.1f} min, 2 -> {res['wall_s'][2] / 60:.1f} min, "
          f"x{res['speedup']:.2f}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-model", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--target", default="p50")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--parts", default="fidelity,samplers,workers")
    ap.add_argument("--out", default="benchmarks/results/search")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if "fidelity" in parts:
        fidelity(f"npz:{args.data}", out)
    if "samplers" in parts:
        samplers(args, out)
    if "workers" in parts:
        workers(args, out)


if __name__ == "__main__":
    main()
