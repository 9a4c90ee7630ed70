"""Benchmark: what int8 costs in accuracy at the 15-epoch reference recipe, per norm and attention,
on the six presets and the searched architectures a committed CIFAR-10 search took furthest.

Each model is trained by `etnas train --holdout` (the reference's recipe: 15 epochs on the search's
training part, one thread, seed 0) in a copy of the search's run directory under `runs/`; its final
report carries the fp32 and int8 test accuracy (onnxruntime static quantization, calibrated on
training images) and their top-1 agreement. The cheapest trainings go first, `--jobs` at a time; a
re-run continues a killed training from its checkpoint and skips the finished ones. `--collect`
only gathers the reports of the trainings finished so far into DIR/results.json and prints the
table.

    .venv/bin/python benchmarks/int8_accuracy.py [--search benchmarks/results/cifar10/search_1204]
        [--searched 6] [--jobs 2] [--out benchmarks/results/int8_accuracy] [--collect]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cifar10_vs_presets import FINAL_EPOCHS, train_finals  # noqa: E402
from benchmarks.int8_speed import only  # noqa: E402
from nas.schema import TrialState  # noqa: E402

RUN_FILES = ("config.json", "study.db", "trials.csv", "front.json")


def run_copy(search: Path, runs: Path) -> Path:
    """The search's run directory copied under `runs` (trainings write beside the study), once; a
    copy is made in a temporary folder and renamed, so a killed copy is not taken for one."""
    run = runs / search.name
    if not run.exists():
        partial = runs / f".{search.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in RUN_FILES:
            shutil.copy2(search / name, partial / name)
        partial.rename(run)
    return run


def chosen(run: Path, searched: int) -> pd.DataFrame:
    """The presets and the `searched` searched architectures the search took furthest (highest rung,
    then accuracy at it; one trial per architecture), cheapest to train first."""
    trials = pd.read_csv(run / "trials.csv")
    done = trials[trials["state"] == TrialState.COMPLETE].drop_duplicates("arch_id")
    presets = done[done["preset"].notna()]
    searched_rows = done[done["preset"].isna()]
    best = searched_rows.sort_values(["rung", "rung_acc"], ascending=False).head(searched)
    return pd.concat([presets, best]).sort_values("flops")


def finished_report(run: Path, number: int) -> dict | None:
    """Trial `number`'s final report if its training at the benchmark's recipe has finished."""
    path = run / "final" / str(number) / "final.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    return report if report.get("epochs") == FINAL_EPOCHS and report.get("holdout") else None


def still_to_train(run: Path, models: pd.DataFrame) -> list[int]:
    """The chosen trials without a finished training (a finished one is not re-run: `train` would
    only evaluate and time it again)."""
    return [n for n in models["number"].tolist() if finished_report(run, n) is None]


def collect(run: Path, models: pd.DataFrame) -> list[dict]:
    """One row per finished training of the recipe: fp32 and int8 test accuracy, by norm and attention."""
    rows = []
    for _, trial in models.iterrows():
        report = finished_report(run, trial["number"])
        if report is None or "test_acc_int8" not in report:  # int8 figures missing: quantization failed
            continue
        preset = trial["preset"] if isinstance(trial["preset"], str) else None
        rows.append({"trial": int(trial["number"]), "name": preset or f"trial-{trial['number']}",
                     "kind": "preset" if preset else "searched", "norm": only(trial["spec"], "norm"),
                     "attention": only(trial["spec"], "attention"), "short": report["short"],
                     "test_acc": report["test_acc"], "test_acc_int8": report["test_acc_int8"],
                     "drop": report["test_acc"] - report["test_acc_int8"],
                     "int8_top1_agreement": report["int8_top1_agreement"], "params": report["params"],
                     "train_min": report["train_s"] / 60})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", type=Path, default=Path("benchmarks/results/cifar10/search_1204"),
                    help="a committed search run directory (with its study.db), from the project root")
    ap.add_argument("--searched", type=int, default=6, help="searched architectures besides the six presets")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_accuracy"))
    ap.add_argument("--collect", action="store_true", help="gather the finished trainings only")
    args = ap.parse_args()
    run = run_copy(args.search, ROOT / "runs" / "int8-accuracy")
    models = chosen(run, args.searched)
    if not args.collect:
        train_finals(run, still_to_train(run, models), [], FINAL_EPOCHS, args.jobs, args.out)
    rows = collect(run, models)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"search": str(args.search),
                                                       "epochs": FINAL_EPOCHS, "models": len(models),
                                                       "rows": rows}, indent=1))
    table = pd.DataFrame(rows)
    if len(table):
        print(table[["name", "norm", "attention", "test_acc", "test_acc_int8", "drop", "int8_top1_agreement"]]
              .to_string(index=False, float_format="%.4f"))
    print(f"{len(rows)} of {len(models)} trainings finished; {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
