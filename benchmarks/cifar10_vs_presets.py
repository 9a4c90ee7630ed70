"""Searched architectures vs the seed papers' hand designs, through the shipped commands only:

1. target: the median latency of the six presets (so three meet it and three do not): for the
   search, their median predicted latency; for the proof, their median measured latency, taken in
   the same timing session as every other model, so that the drift of a shared machine between
   the search and the final timing cannot move presets across the target;
2. `etnas run` on the data under that target: the multi-fidelity search (rungs, --promotion);
3. `etnas train --holdout` with one identical recipe (the long-training reference's: FINAL_EPOCHS on
   the search's training part, one thread, seed 0) for every preset and the best 3 searched
   (non-preset) front trials, --jobs at a time; a preset the reference pool (--reference) already
   trained with that recipe is read from it instead of trained again. So are timm's models a user
   would pick instead (`benchmarks/timm_baselines.py`): trained with the same recipe, or read from
   an earlier results directory (--baselines-from) that trained them so. Then every model is timed
   on this CPU in the latency model's runtime (onnxruntime: the file `export` ships; the baselines as
   `torch.onnx.export` writes them), in turn with the anchor (shuffled every sweep) and on the
   latency model's scale (`time_at_reference`), so that the machine's drift cannot favour one of
   them and measured and predicted latencies compare like for like (a latency does not depend on
   the weights, so a preset or a baseline read from earlier results is timed untrained);
4. DIR/results.json, a markdown table and DIR/cifar10_front.png (test accuracy vs measured latency).

    .venv/bin/python benchmarks/cifar10_vs_presets.py [--data ../shared/data/cifar10.npz] [--out DIR]
        [--latency-model runs/latency/cpu-ort.model | --runtime onnxruntime|torch] [--baselines NAME ...]
        [--reference benchmarks/results/reference] [--quick] [--trials N] [--top-epochs E]
        [--baselines-from benchmarks/results/cifar10] [--reuse DIR/runs/search] [--force] [--jobs J]

`--data digits` runs on the embedded digits set; `--quick` uses tiny budgets (the test runs that).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.jobs import read_jsonl  # noqa: E402
from benchmarks.timm_baselines import (BASELINES, baseline_runner, finished_baselines, input_size,  # noqa: E402
                                      train_baseline, trained_baseline)
from evaluators.data import Dataset, load_dataset  # noqa: E402
from evaluators.recipes import FINAL_RECIPE  # noqa: E402
from latency_models import LatencyModel  # noqa: E402
from latency_models.calibrate import calibrate  # noqa: E402
from latency_models.measure import anchor_spec, deployed_runner, runtime_runner, time_at_reference  # noqa: E402
from nas import SearchError  # noqa: E402
from nas.config import CALIBRATION_ARCHS, DEFAULT_RUNTIME, RUNTIMES  # noqa: E402
from nas.final import final_dir, load_trained, predictor_reference_ms, target_runtime, train_final  # noqa: E402
from nas.rundir import run_config  # noqa: E402
from nas.schema import TrialState  # noqa: E402
from search_space import ArchSpec, SearchSpace, build_model, deploy, presets  # noqa: E402
from search_space.presets import SEARCH_SCALE  # noqa: E402

FINAL_EPOCHS = 15  # the long-training reference's recipe, so that its preset trainings are reused
# The search: the product's multi-fidelity defaults (rungs at 0.5, 2 and 6.5 epochs of the training
# part, eta 3, promotion within latency bands) with 120 trials; TPE had the highest median hypervolume in the
# sampler comparison (BENCHMARKS.md, "Search engine").
BUDGETS = {"full": {"trials": 120, "base_epochs": 0.5, "epochs": 6.5, "eta": 3, "promotion": "bands",
                    "sampler": "tpe", "workers": 2, "final_epochs": FINAL_EPOCHS, "sweeps": 400, "searched_finals": 3},
           "quick": {"trials": 8, "base_epochs": 0.1, "epochs": 0.3, "eta": 3, "promotion": "bands",
                     "sampler": "tpe", "workers": 1, "final_epochs": 0.3, "sweeps": 20, "searched_finals": 1}}


def cli(*args: str, threads: int | None = None, script: Path = ROOT / "search.py") -> None:
    """Run an etnas command (or another script); if it fails, stop with one line (the command has
    said why above)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=env) as child:
        try:
            returncode = child.wait()
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its state and exit
            child.wait()
            raise
    if returncode:
        sys.exit(f"error: `{script.name} {args[0]}` exited with status {returncode}; see its message above")


def pick_target(model: LatencyModel, dataset) -> float:
    specs = presets(dataset.img_size, dataset.in_chans, dataset.num_classes, SEARCH_SCALE, SEARCH_SCALE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return round(float(pd.Series(model.predict(list(specs.values()))).median()), 4)


def chosen_trials(run: Path, target: float, searched_finals: int = 3) -> tuple[dict[int, str], list[int]]:
    """Preset trials by number, and the `searched_finals` most accurate searched front trials (topped
    up with the most accurate other feasible ones if the front holds fewer searched points)."""
    trials = pd.read_csv(run / "trials.csv")
    done = trials[trials["state"] == TrialState.COMPLETE]
    preset_rows = done[done["preset"].notna()]
    front = {f["trial"] for f in json.loads((run / "front.json").read_text())}
    searched = done[done["preset"].isna() & (done["pred_ms"] <= target)].copy()
    searched["on_front"] = searched["number"].isin(front)
    searched = searched.sort_values(["on_front", "rung", "rung_acc"], ascending=False)
    return dict(zip(preset_rows["number"], preset_rows["preset"])), searched["number"].head(searched_finals).tolist()


def reuse_final(previous: Path, run: Path, number: int, arch_id: str, epochs: float, dataset: str) -> bool:
    """Copy a finished final training of the same architecture, recipe and data from a previous run
    of this script (training is seeded, so it would repeat it); it is then read, not trained again."""
    for path in Path(previous).glob("final/*/final.json"):
        if made_as(json.loads(path.read_text()), arch_id, epochs, dataset):
            shutil.copytree(path.parent, run / "final" / str(number), dirs_exist_ok=True)
            return True
    return False


# The reference recipe, given whole: `train` would otherwise keep an earlier training's options
REFERENCE_OPTIONS = {**FINAL_RECIPE, "mixup": 0.0, "cutmix": 0.0, "randaugment": ""}


def made_as(report: dict, arch_id: str, epochs: float, dataset: str) -> bool:
    """Whether a final training's report is this benchmark's: the architecture, held out, at `epochs`
    on `dataset`, with the reference recipe (a report from before recipes were recorded had it)."""
    made = (report["arch_id"], report["epochs"], report["dataset"], report.get("holdout"))
    recipe = report.get("recipe", REFERENCE_OPTIONS)
    return made == (arch_id, epochs, dataset, True) and all(
        (recipe.get(k) or None) == (v or None) for k, v in REFERENCE_OPTIONS.items())


def finished_final(run: Path, number: int, arch_id: str, epochs: float, dataset: str) -> bool:
    """Whether trial `number` of `run` has this benchmark's final training already (a rerun reads
    it: evaluating and quantizing it again would give the same figures)."""
    report = final_dir(run, number) / "final.json"
    return report.exists() and made_as(json.loads(report.read_text()), arch_id, epochs, dataset)


def reference_trainings(reference: Path | None, epochs: float) -> dict[str, dict]:
    """The reference pool's seed-0 trainings by arch_id, where they used this benchmark's recipe."""
    from evaluators.train import training_curve

    ours = training_curve({**FINAL_RECIPE, "epochs": epochs, "seed": 0})
    rows = read_jsonl(Path(reference) / "reference.jsonl") if reference else []
    return {r["arch_id"]: r for r in rows if r["seed"] == 0 and training_curve(r["recipe"]) == ours}


def train_finals(run: Path, numbers: list[int], baselines: list[str], epochs: float, jobs: int, out: Path) -> None:
    """`etnas train --holdout` for each trial and `timm_baselines.py` for each baseline, `jobs` at a
    time with one thread each (as the reference trains); one interrupted goes on from its checkpoint.
    With one job they run in this process, one after another, without a start-up each. The
    first failure cancels the trainings not yet started and stops the script once those under way
    end."""
    if jobs == 1:
        torch.set_num_threads(1)
        for name in baselines:
            train_baseline(run, name, epochs, out)
        for number in numbers:
            try:
                train_final(run, number, epochs, holdout=True, **REFERENCE_OPTIONS)
            except SearchError as e:  # what `etnas train` would say in one line
                sys.exit(f"error: {e}")
        return

    failed = threading.Event()

    def one(number: int) -> None:
        options = [f"--{k.replace('_', '-')}={v if v != '' else 'off'}" for k, v in REFERENCE_OPTIONS.items()]
        cli("train", run, "--trial", number, "--epochs", epochs, "--holdout", *options, threads=1)

    def baseline(name: str) -> None:
        cli(run, name, "--epochs", epochs, "--out", out, threads=1, script=ROOT / "benchmarks" / "timm_baselines.py")

    def unless_failed(job: Callable[[object], None], arg: object) -> None:
        if failed.is_set():  # set by the failing job itself, so no later job starts
            return
        try:
            job(arg)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(jobs) as pool:
        started = [pool.submit(unless_failed, baseline, name) for name in baselines] + [
            pool.submit(unless_failed, one, n) for n in numbers]
        for done in as_completed(started):
            if done.exception() is not None:
                pool.shutdown(cancel_futures=True)
                raise done.exception()


def measure_interleaved(run: Path, models: dict[int, torch.nn.Module], baselines: dict[str, torch.nn.Module],
                        sweeps: int) -> dict[object, dict]:
    """Latency of each deployed model and baseline, batch 1, 1 thread, in the run's target runtime,
    all timed in turn with the anchor, on the scale of the run's latency model (as `train`
    measures)."""
    torch.set_num_threads(1)
    cfg = run_config(run)
    runtime = target_runtime(cfg)
    runners = {}
    for n, model in models.items():
        spec = model.spec
        x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
        runners[n] = runtime_runner(deploy(model), x, runtime)
    for name, model in baselines.items():
        side = input_size(name)
        runners[name] = baseline_runner(model, torch.randn(1, spec.in_chans, side, side), runtime)
    reference = predictor_reference_ms(cfg, spec.img_size)
    return time_at_reference(runners, deployed_runner(anchor_spec(spec), runtime)[0], reference, sweeps)[0]


MARKER_PT = 7
LABEL_OFFSETS = [(6, 4), (6, -11), (-6, 4), (-6, -11), (6, 15), (6, -22), (-6, 15), (-6, -22), (6, 26), (6, -33)]


def plot(rows: list[dict], target: float, runtime: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker, color in (("preset", "D", "#2ca02c"), ("searched", "o", "#9467bd"), ("timm", "s", "#ff7f0e")):
        part = [r for r in rows if r["kind"] == kind]
        ms = [r["measured_ms"] for r in part]
        spread = [[m - r["p10_ms"] for m, r in zip(ms, part)], [r["p90_ms"] - m for m, r in zip(ms, part)]]
        ax.errorbar(ms, [r["test_acc"] for r in part], xerr=spread, fmt=marker, color=color, label=kind,
                    markersize=MARKER_PT, elinewidth=0.8, capsize=2)
    ax.axvline(target, linestyle="--", color="gray", label=f"target {target:g} ms")
    ax.set_xlabel(f"measured latency in {runtime} after deploy (ms, batch 1, 1 thread; bars: p10-p90)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the labels: they are placed where the axes will be drawn
    label_points(ax, [(r["name"], r["measured_ms"], r["test_acc"]) for r in rows])
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Name each point beside it, at the first offset (points) where the label covers no label placed
    before it and no other point: near-ties of latency and accuracy are common (the isotropic presets)."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    centres = ax.transData.transform([(x, y) for _, x, y in points])
    half = MARKER_PT / 2 * ax.figure.dpi / 72
    markers = [Bbox.from_extents(cx - half, cy - half, cx + half, cy + half) for cx, cy in centres]
    taken = []
    for i in sorted(range(len(points)), key=lambda i: (-points[i][2], points[i][1])):
        name, x, y = points[i]
        others = taken + markers[:i] + markers[i + 1:]
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                               ha="left" if dx > 0 else "right")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in others) or (dx, dy) == LABEL_OFFSETS[-1]:
                taken.append(box)
                break
            text.remove()


def parse_args() -> argparse.Namespace:
    default_data = ROOT.parent / "shared" / "data" / "cifar10.npz"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(default_data), help="an npz in the shared format, or 'digits'")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cifar10"))
    ap.add_argument("--latency-model", help="predictor for this CPU, whose runtime the search and the timing use "
                                            "(default: calibrate this machine in --runtime as `etnas run` does, "
                                            "cached)")
    ap.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                    help="the runtime calibrated when no --latency-model is given")
    ap.add_argument("--baselines", nargs="*", choices=sorted(BASELINES), default=sorted(BASELINES),
                    help="timm models trained and timed beside the others (default: all)")
    ap.add_argument("--reference", help="the long-training reference's results directory, whose preset trainings "
                                        "with this recipe are reused (default: benchmarks/results/reference "
                                        "with the default data, which it was trained on; none otherwise)")
    ap.add_argument("--baselines-from", help="an earlier results directory whose timm baselines, trained with "
                                             "this recipe on this data, are read instead of trained again and "
                                             "timed untrained (default: benchmarks/results/cifar10 with the default "
                                             "data; none otherwise)")
    ap.add_argument("--reuse", help="a previous run's search dir (DIR/runs/search) whose finished final trainings "
                                     "of the same architectures and recipe are reused")
    ap.add_argument("--force", action="store_true", help="search with a latency model measured on another CPU "
                                                          "(etnas run --force); the final timing is still this CPU's")
    ap.add_argument("--trials", type=int, help="the search's trial count (default: 120, or 8 with --quick); "
                                            "a larger count extends a finished search in --out")
    ap.add_argument("--top-epochs", type=float, help="the search's top rung (default 6.5, 0.3 with --quick); "
                                                      "another value needs a new --out")
    ap.add_argument("--jobs", type=int, default=2, help="final trainings at once, one thread each (1: in this "
                                                        "process, one after another)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (the test runs this on digits)")
    args = ap.parse_args()
    if Path(args.data).resolve() == default_data.resolve():  # "" turns either off
        if args.reference is None:
            args.reference = str(ROOT / "benchmarks" / "results" / "reference")
        if args.baselines_from is None:
            args.baselines_from = str(ROOT / "benchmarks" / "results" / "cifar10")
    return args


def search(args, budget: dict, out: Path) -> tuple[Path, str, Dataset, float]:
    """Run the search under the presets' median predicted latency: (run dir, dataset argument, dataset, search target)."""
    dataset_arg = "digits" if args.data == "digits" else f"npz:{Path(args.data).resolve()}"
    dataset = load_dataset(dataset_arg)
    if args.latency_model is None:
        print("calibrating this CPU (measure + fit, cached under runs/latency/) ...", file=sys.stderr, flush=True)
        args.latency_model = str(calibrate(dataset.img_size, dataset.in_chans, dataset.num_classes,
                                           ROOT / "runs" / "latency", SearchSpace(), runtime=args.runtime,
                                           n=CALIBRATION_ARCHS)[0])
    target = pick_target(LatencyModel.load(args.latency_model), dataset)
    cli("run", "--name", "search", "--runs-dir", out / "runs", "--dataset", dataset_arg, "--target-ms", target,
        "--latency-model", args.latency_model, *(["--force"] if args.force else []),
        *(f"--{k.replace('_', '-')}={budget[k]}"
          for k in ("trials", "base_epochs", "epochs", "eta", "promotion", "sampler", "workers")))
    return out / "runs" / "search", dataset_arg, dataset, target


def result_row(name: str, kind: str, trial: pd.Series | None, final: dict, timing: dict, source: str) -> dict:
    """One model's figures: prediction, size and cost from the run's records (one source for every
    row; a baseline outside the space has no prediction), accuracy and training from its final
    training, latency from the common timing."""
    ms = timing["median_ms"]
    pred = None if trial is None else float(trial["pred_ms"])
    return {"name": name, "kind": kind, "trial": None if trial is None else int(trial.name), "short": final["short"],
            "test_acc": final["test_acc"], "test_acc_int8": final.get("test_acc_int8"), "measured_ms": ms,
            "pred_ms": pred,
            "pred_err": None if pred is None else (pred - ms) / ms,
            "params": int(final["params"] if trial is None else trial["params"]),
            "flops": None if trial is None else int(trial["flops"]),
            "p10_ms": timing["p10_ms"], "p90_ms": timing["p90_ms"], "train_min": final["train_s"] / 60,
            "val_curve": final.get("val_curve"), "source": source}


def final_rows(run: Path, presets_by_trial: dict[int, str], searched: list[int], baselines: list[str],
               reference: dict[str, dict], finished: dict[str, tuple[torch.nn.Module, dict]], budget: dict,
               jobs: int, out: Path) -> list[dict]:
    """Train what the reference and the `finished` baselines lack, time every model together, one row each."""
    trials = pd.read_csv(run / "trials.csv").set_index("number")
    numbers = [*presets_by_trial, *searched]
    from_reference = {n: reference[trials.at[n, "arch_id"]] for n in presets_by_trial
                      if trials.at[n, "arch_id"] in reference}
    trained = [n for n in numbers if n not in from_reference]
    to_train = [name for name in baselines if name not in finished]
    epochs, dataset = float(budget["final_epochs"]), run_config(run)["dataset"]
    unfinished = [n for n in trained if not finished_final(run, n, trials.at[n, "arch_id"], epochs, dataset)]
    train_finals(run, unfinished, to_train, budget["final_epochs"], jobs, out)
    models = {n: load_trained(run, n)[0] for n in trained}
    models.update({n: build_model(ArchSpec.from_dict(r["spec"])) for n, r in from_reference.items()})
    spec = next(iter(models.values())).spec
    timm_models = {name: trained_baseline(out, name, spec.num_classes, spec.in_chans) for name in to_train}
    timm_models.update(finished)
    timings = measure_interleaved(run, models, {name: m for name, (m, _) in timm_models.items()}, budget["sweeps"])
    rows = []
    for n in numbers:
        kind, name = ("preset", presets_by_trial[n]) if n in presets_by_trial else ("searched", f"trial-{n}")
        final, source = ((from_reference[n], "reference") if n in from_reference else
                         (json.loads((run / "final" / str(n) / "final.json").read_text()), "trained"))
        rows.append(result_row(name, kind, trials.loc[n], final, timings[n], source))
    rows += [result_row(name, "timm", None, report, timings[name], "earlier results" if name in finished else "trained")
             for name, (_, report) in timm_models.items()]
    return rows


def main() -> None:
    args = parse_args()
    overrides = {"trials": args.trials, "epochs": args.top_epochs}
    budget = {**BUDGETS["quick" if args.quick else "full"], **{k: v for k, v in overrides.items() if v is not None}}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    run, dataset_arg, dataset, search_target = search(args, budget, out)
    search_min = (time.time() - start) / 60
    presets_by_trial, searched = chosen_trials(run, search_target, budget["searched_finals"])
    trials = pd.read_csv(run / "trials.csv").set_index("number")
    for number in [*presets_by_trial, *searched] if args.reuse else []:
        reuse_final(Path(args.reuse), run, number, trials.at[number, "arch_id"], float(budget["final_epochs"]),
                    dataset_arg)
    cfg = run_config(run)
    finished = finished_baselines(args.baselines_from, args.baselines, float(budget["final_epochs"]), dataset_arg,
                                  cfg["seed"], dataset.num_classes, dataset.in_chans)
    rows = final_rows(run, presets_by_trial, searched, args.baselines,
                      reference_trainings(args.reference, budget["final_epochs"]), finished, budget, args.jobs, out)
    target = round(float(pd.Series([r["measured_ms"] for r in rows if r["kind"] == "preset"]).median()), 4)
    runtime = target_runtime(cfg)
    results = {"target_ms": target, "target_rule": "median measured latency of the six presets, timed with all models",
               "runtime": runtime, "latency_model": args.latency_model,
               "search_target_ms": search_target, "search_target_rule": "median predicted latency of the six presets",
               "data": dataset_arg, "budget": budget, "reference": args.reference, "baselines_from": args.baselines_from,
               "search_training_min": float(trials["train_s"].sum()) / 60,
               "invocation_min": {"search": search_min, "total": (time.time() - start) / 60}, "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(rows, target, runtime, out / "cifar10_front.png")
    print_table(results)


def print_table(results: dict) -> None:
    print(f"target {results['target_ms']} ms in {results['runtime']} (median measured latency of the presets; the search used their "
          f"median predicted latency, {results['search_target_ms']} ms); the search's trainings took "
          f"{results['search_training_min']:.1f} min (summed over workers and resumes); this invocation "
          f"{results['invocation_min']['total']:.1f} min")
    print("| architecture | kind | short | test acc | measured ms | predicted ms (err) | params | MFLOPs | train min "
          "| trained |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        pred = "-" if r["pred_ms"] is None else f"{r['pred_ms']:.3f} ({r['pred_err']:+.1%})"
        flops = "-" if r["flops"] is None else f"{r['flops'] / 1e6:.1f}"
        print(f"| {r['name']} | {r['kind']} | `{r['short']}` | {r['test_acc']:.4f} | {r['measured_ms']:.3f} | "
              f"{pred} | {r['params']:,} | {flops} | {r['train_min']:.1f} | {r['source']} |")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the search and the finished trainings are kept; re-run the same command to resume",
              file=sys.stderr)
        sys.exit(130)
