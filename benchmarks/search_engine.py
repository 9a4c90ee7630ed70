"""Benchmarks of the search engine on CIFAR-10 (issue: search engine):

  fidelity  for each proxy budget (--budgets), Kendall tau between proxy accuracy and the accuracy
            after 5x longer training, and after the final recipe (--final-epochs on the whole
            training split), over the 6 presets + --fidelity-archs sampled architectures; also
            seconds per proxy evaluation. `--device cuda --jobs 8` runs it on a GPU machine.
  samplers  NSGA-II, TPE and random search, 3 seeds each: hypervolume of the feasible front
            (reference point: accuracy 0 at the target latency) at equal numbers of proxy trainings.
  workers   wall-clock of the same search with 1 and with 2 Ray workers.

    .venv/bin/python benchmarks/search_engine.py --latency-model runs/latency/cpu-torch.model \
        [--data ../shared/data/cifar10.npz] [--parts fidelity,samplers,workers] [--out benchmarks/results/search]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from evaluators.data import load_dataset
from evaluators.proxy import evaluate_rung
from evaluators.train import TrainConfig
from nas.schema import TrialState
from search_space import SearchSpace, presets, sample
from search_space.presets import SEARCH_SCALE

ROOT = Path(__file__).resolve().parents[1]

PROXY = {"epochs": 1, "subset": 0.1}  # the budget the searches below use (see `fidelity`)


def parse_budget(text: str) -> dict:
    """'2x0.25' -> 2 epochs on 25% of the training split."""
    epochs, subset = text.split("x")
    return {"epochs": float(epochs), "subset": float(subset)}


def hypervolume(points: list[tuple[float, float]], target_ms: float) -> float:
    """Area dominated by (ms, acc) points with ms <= target, against the reference (target, 0)."""
    front, best = [], -1.0
    for ms, acc in sorted(p for p in points if p[0] <= target_ms):
        if acc > best:
            front.append((ms, acc))
            best = acc
    edges = [ms for ms, _ in front[1:]] + [target_ms]
    return float(sum(acc * (nxt - ms) for (ms, acc), nxt in zip(front, edges)))


_DATA: tuple = ()


def _hold(data: tuple) -> None:
    """Worker initializer: the data is sent once per process, not once per training."""
    global _DATA
    _DATA = data


def _proxy(args):
    spec_json, cfg = args
    return evaluate_rung(spec_json, _DATA, cfg, checkpoint=None)


def fidelity(args, out: Path) -> dict:
    """Each proxy budget against the same training 5x longer (the issue's definition) and against the
    final recipe (all of the training split for `--final-epochs`), on the fixed validation split.

    Every training is appended to DIR/fidelity_runs.jsonl as it ends; a re-run (with more budgets,
    or on another machine) skips what is there and summarises everything there."""
    data = load_dataset(f"npz:{args.data}")
    mean, std = data.channel_stats()
    arrays = (*data.holdout(seed=0), mean, std)
    shape = (data.img_size, data.in_chans, data.num_classes)
    rng = np.random.default_rng(123)
    specs = list(presets(*shape, SEARCH_SCALE, SEARCH_SCALE).values()) + [
        sample(rng, SearchSpace(), *shape) for _ in range(args.fidelity_archs)]
    runs = {}
    for name in args.budgets.split(","):
        runs[name] = parse_budget(name)
        if "5x" in args.refs:
            runs[f"{name}*5"] = {**runs[name], "epochs": 5 * runs[name]["epochs"]}
    if "final" in args.refs:
        runs["final"] = {"epochs": args.final_epochs, "subset": None}
    log = out / "fidelity_runs.jsonl"
    logged = map(json.loads, log.read_text().splitlines()) if log.exists() else []
    done = {(r["label"], r["arch_id"]): r for r in logged}
    jobs = [(label, spec, TrainConfig(**run, seed=0, threads=1, device=args.device))
            for label, run in runs.items() for spec in specs if (label, spec.arch_id) not in done]
    jobs.sort(key=lambda j: -j[2].epochs * (j[2].subset or 1))  # longest first: no straggler at the end
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_hold, initargs=(arrays,)) as pool, \
            log.open("a") as f:
        for (label, spec, cfg), res in zip(jobs, pool.map(_proxy, [(spec.to_json(), cfg) for _, spec, cfg in jobs])):
            row = {"label": label, "arch_id": spec.arch_id, "short": spec.short(), "epochs": cfg.epochs,
                   "subset": cfg.subset, "device": cfg.device,
                   **{k: res.get(k) for k in ("val_acc", "train_s", "failure")}}
            done[(label, spec.arch_id)] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"  {label:>10} {row['val_acc']!s:>8.6} {row['train_s'] or 0:7.1f}s {row['short'][:70]}", flush=True)
    acc = {label: {a: r["val_acc"] for (lab, a), r in done.items() if lab == label and r["val_acc"] is not None}
           for label in {lab for lab, _ in done}}

    def tau(a: str, b: str) -> tuple[float | None, int]:
        common = [s.arch_id for s in specs if s.arch_id in acc.get(a, {}) and s.arch_id in acc.get(b, {})]
        if len(common) < 3:
            return None, len(common)
        return float(kendalltau([acc[a][i] for i in common], [acc[b][i] for i in common])[0]), len(common)

    table = {}
    for name in sorted(lab for lab in acc if lab != "final" and not lab.endswith("*5")):
        rows = [r for (lab, _), r in done.items() if lab == name and r["train_s"] is not None]
        (t5, n5), (tf, nf) = tau(name, f"{name}*5"), tau(name, "final")
        table[name] = {"tau_vs_5x": t5, "n_vs_5x": n5, "tau_vs_final": tf, "n_vs_final": nf,
                       "median_train_s": float(np.median([r["train_s"] for r in rows])),
                       "train_device": sorted({r["device"] for r in rows})}
        print(f"fidelity {name}: tau vs 5x {t5} (n={n5}), vs final {tf} (n={nf}), "
              f"median {table[name]['median_train_s']:.1f} s on {table[name]['train_device']}", flush=True)
    res = {"final_epochs": args.final_epochs, "n_archs": len(specs), "budgets": table,
           "tau_5x_vs_final": {name: tau(f"{name}*5", "final")[0] for name in table}}
    (out / "fidelity.json").write_text(json.dumps(res, indent=1))
    return res


def search(name: str, out: Path, args, sampler: str, seed: int, workers: int, trials: int) -> float:
    cmd = [sys.executable, str(ROOT / "search.py"), "run", "--name", name, "--runs-dir", str(out / "runs"),
           "--dataset", f"npz:{args.data}", "--target-ms", args.target, "--latency-model", args.latency_model,
           "--trials", str(trials), "--workers", str(workers), "--sampler", sampler, "--seed", str(seed),
           "--epochs", str(PROXY["epochs"]), "--base-epochs", str(PROXY["epochs"]),  # one rung: the flat proxy
           "--subset", str(PROXY["subset"])]
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
    k = min(int((r["trials"].state == TrialState.COMPLETE).sum()) for r in runs.values())
    table = {}
    for name, r in runs.items():
        trained = r["trials"][r["trials"].state == TrialState.COMPLETE].sort_values("number").head(k)
        table[name] = {"hypervolume": hypervolume(list(zip(trained.pred_ms, trained.val_acc)), r["target"]),
                       "trained": k, "trials": len(r["trials"]), "wall_s": r["wall_s"],
                       "infeasible": int((r["trials"].state == TrialState.INFEASIBLE).sum()), "target_ms": r["target"]}
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
    ap.add_argument("--latency-model", help="required by samplers and workers")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--target", default="p50")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--parts", default="fidelity,samplers,workers")
    ap.add_argument("--budgets", default="1x0.1,2x0.25,4x0.25", help="proxy budgets EPOCHSxSUBSET for fidelity")
    ap.add_argument("--refs", default="final,5x", help="references to train: final recipe, 5x each budget")
    ap.add_argument("--final-epochs", type=float, default=6)
    ap.add_argument("--fidelity-archs", type=int, default=10, help="sampled archs beside the presets")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (fidelity)")
    ap.add_argument("--device", default="cpu", help="where fidelity trains: cpu, or cuda on a GPU machine")
    ap.add_argument("--out", default="benchmarks/results/search")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if "fidelity" in parts:
        fidelity(args, out)
    if "samplers" in parts:
        samplers(args, out)
    if "workers" in parts:
        workers(args, out)


if __name__ == "__main__":
    main()
