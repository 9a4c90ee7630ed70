"""From a trial of a run to a trained model: full training on train + validation data (or, held out,
on the search's training part), one test evaluation, and the deployed model's latency measured on
this device beside its prediction."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from evaluators.recipes import FINAL_RECIPE
from evaluators.train import Normalizer, TrainConfig, accuracy, train, training_curve
from latency_models.measure import (anchor_spec, deployed_runner, fingerprint, fingerprint_id, runtime_runner,
                                     time_at_reference, time_interleaved)
from search_space import ArchSpec, build_model, count_params, deploy
from search_space.spec import JSON_KINDS, json_value_fits

from . import SearchError
from .config import BOUNDS, check_bounds
from .int8 import evaluate_int8, fp32_onnx
from .records import atomic_write
from .rundir import command_path, load_run_study, load_trial, run_config, run_dataset, write_records
from .schema import Attr


def final_dir(run_dir: Path, number: int) -> Path:
    return Path(run_dir) / "final" / str(number)


def target_runtime(cfg: dict) -> str:
    """The runtime of a run's latency target: its latency model's (torch for runs from before the
    target was recorded)."""
    return (cfg.get("latency_target") or {}).get("runtime", "torch")


def target_precision(cfg: dict) -> str:
    """The precision of a run's latency target (fp32 for runs from before int8)."""
    return (cfg.get("latency_target") or {}).get("precision", "fp32")


def predictor_reference_ms(cfg: dict, img_size: int, runtime: str | None = None,
                           precision: str | None = None) -> float | None:
    """The reference speed of the run's predicted latencies, where its latency model was measured
    on this device in `runtime` and `precision` (default: the run's; CPU, 1 thread, batch 1); None
    where it was not (a timing here is then at this session's speed, which no prediction is on)."""
    runtime, precision = runtime or target_runtime(cfg), precision or target_precision(cfg)
    here = fingerprint_id(fingerprint("cpu", runtime, 1, 1, img_size, precision))
    return cfg.get("latency_reference_ms") if cfg.get("latency_fingerprint") == here else None


def time_on_target(deployed: torch.nn.Module, cfg: dict, runtime: str | None = None, exported: Path | None = None,
                   sweeps: int = 200, precision: str = "fp32") -> dict:
    """Time a deployed model on this CPU, 1 thread, batch 1, in `runtime` (default: the run's
    target's; for onnxruntime, its `exported` file in `precision`, or the graph `export` writes):
    median, p10 and p90 ms and the fingerprint timed. Where the run's predictor was measured here in that
    runtime, beside the anchor and on the predictor's scale (the anchor and reference used are
    returned); elsewhere alone, at this session's speed."""
    spec = deployed.spec
    runtime = runtime or target_runtime(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
        model = runtime_runner(deployed, x, runtime, exported=exported, precision=precision)
        reference = predictor_reference_ms(cfg, spec.img_size, runtime, precision)
        if reference is None:  # no scale to put it on: the model alone, at this session's speed
            timing, anchor_ms, used = time_interleaved({"model": model}, sweeps)["model"], None, None
        else:
            anchor = deployed_runner(anchor_spec(spec), runtime, precision=precision)[0]
            timings, anchor_ms, used = time_at_reference({"model": model}, anchor, reference, sweeps=sweeps)
            timing = timings["model"]
    finally:
        torch.set_num_threads(threads)
    return {"measured_ms": timing["median_ms"], "p10_ms": timing["p10_ms"], "p90_ms": timing["p90_ms"],
            "raw_median_ms": timing["raw_median_ms"], "anchor_ms": anchor_ms, "reference_ms": used,
            "on_predictor_scale": reference is not None,
            "device": fingerprint("cpu", runtime, 1, 1, spec.img_size, precision)}


def train_final(run_dir: Path, number: int, epochs: float | None = None, device: str = "cpu",
                on_step: Callable[[int, int, float], None] | None = None, holdout: bool | None = None,
                **recipe) -> dict:
    """Train trial `number` with the full budget (on `device`) and FINAL_RECIPE, any TrainConfig
    field overridden by `recipe`; resumes from its checkpoint, whose recorded recipe fills the
    options not given (None), so that a re-run continues or re-measures it. With
    `holdout`, train on the search's training part only and record the held-out validation
    accuracy after every epoch (the long-training reference's protocol). The latency is measured
    in the run's target runtime on this machine's CPU (`time_on_target`)."""
    cfg = run_config(run_dir)
    trial = load_trial(run_dir, number)
    spec = ArchSpec.from_json(trial.user_attrs[Attr.SPEC])
    out = final_dir(run_dir, trial.number)
    tcfg, holdout = final_config(out, {**recipe, "epochs": epochs, "holdout": holdout}, cfg, device)
    data = run_dataset(run_dir, cfg)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = data.channel_stats()
    x, y, x_val, y_val = data.holdout(seed=cfg["seed"]) if holdout else (data.x_train, data.y_train, None, None)
    t0 = time.perf_counter()
    res = train(spec, x, y, x_val, y_val, tcfg, mean=mean, std=std, on_step=on_step,
                checkpoint=recipe_checkpoint(out, {**dataclasses.asdict(tcfg), "holdout": holdout}))
    norm = Normalizer(mean, std, spec.img_size)
    test_acc = accuracy(res.model, data.x_test, data.y_test, norm)
    model = res.model.cpu()
    torch.save({"spec": spec.to_json(), "state_dict": model.state_dict(), "mean": mean, "std": std,
                "label_names": data.classes}, out / "model.pt")
    deployed = deploy(model)
    with fp32_onnx(deployed) as fp32:  # quantized, and timed where the target is onnxruntime fp32
        int8 = evaluate_int8(fp32, deployed, data, norm, out / "model.int8.onnx")
        int8_target = target_precision(cfg) == "int8" and "int8_failure" not in int8
        timing = time_on_target(deployed, cfg, exported=out / "model.int8.onnx" if int8_target else fp32,
                                precision="int8" if int8_target else "fp32")
    pred = trial.user_attrs[Attr.PRED_MS]
    report = {"trial": trial.number, "arch_id": spec.arch_id, "short": spec.short(), "test_acc": test_acc, **int8,
              "val_acc_proxy": (trial.user_attrs.get(Attr.RUNG_ACCS) or [trial.user_attrs.get(Attr.VAL_ACC)])[-1],
              "proxy_rung": len(trial.user_attrs.get(Attr.RUNG_ACCS) or [None]) - 1, "pred_ms": pred,
              **timing, "pred_rel_err": (pred - timing["measured_ms"]) / timing["measured_ms"], "epochs": tcfg.epochs,
              "recipe": {k: getattr(tcfg, k) for k in ("batch_size", "lr", "weight_decay", "mixup", "cutmix",
                                                       "randaugment")},
              "holdout": holdout, "trained_examples": len(y), "val_curve": res.history if holdout else None,
              "train_s": res.train_s, "steps": res.steps, "resumed_at_step": res.start_step,
              "wall_s": time.perf_counter() - t0, "flops": trial.user_attrs.get(Attr.FLOPS),
              "params": count_params(deployed), "dataset": cfg["dataset"], "trained_on": device}
    atomic_write(out / "final.json", json.dumps(report, indent=1))  # a full disk leaves none, not a cut one
    write_records(load_run_study(run_dir), run_dir, float(cfg["target_ms"]))  # front.json with this training
    return report


OPTION_BOUNDS = {"epochs": BOUNDS["epochs"], "lr": BOUNDS["lr"], "batch_size": (2, math.inf, True),
                 "mixup": (0, math.inf, True), "cutmix": (0, math.inf, True)}
NOT_OPTIONS = ("seed", "threads", "device")  # the run's seed; how it trains, not what


def default_epochs(cfg: dict) -> float:
    """A final training's epochs where none are asked for: 4x the search's top rung, at least 10."""
    return max(4 * float(cfg["epochs"]), 10)


def final_config(out: Path, given: dict, cfg: dict, device: str) -> tuple[TrainConfig, bool]:
    """The final training's TrainConfig and holdout: each field `given` (None: not given), else the
    one the training in `out` was made with (a re-run goes on with it, not from scratch), else
    FINAL_RECIPE's and `default_epochs`; checked before anything is written."""
    options = {"holdout", *TrainConfig.__dataclass_fields__} - set(NOT_OPTIONS)
    unknown = sorted(set(given) - options)
    if unknown:
        raise SearchError(f"unknown training options {', '.join(unknown)}; choose from {', '.join(sorted(options))}")
    made_with = checkpoint_recipe(out, {}) if (out / "checkpoint.pt").exists() else None
    recorded = {k: v for k, v in (made_with or {}).items() if k in options}
    if not all(option_fits(k, v) for k, v in recorded.items()):  # a damaged record: that training is set aside
        recorded = {}
    recipe = {**FINAL_RECIPE, "epochs": default_epochs(cfg), "holdout": False, **recorded,
              **{k: v for k, v in given.items() if v is not None}}
    for name, (low, high, low_allowed) in OPTION_BOUNDS.items():
        check_bounds(name, recipe.get(name), low, high, low_allowed, whole=name == "batch_size")
    holdout = recipe.pop("holdout")
    if not isinstance(holdout, bool):
        raise SearchError(f"holdout: {holdout!r} is not True or False")
    try:
        return TrainConfig(**{**recipe, "randaugment": recipe.get("randaugment") or None}, seed=cfg["seed"],
                           threads=torch.get_num_threads(), device=device), holdout
    except ValueError as e:  # a RandAugment config timm does not take
        raise SearchError(str(e)) from None


def option_fits(name: str, value: object) -> bool:
    """Whether `value` is a JSON value of the type TrainConfig's field `name` (holdout: a bool) takes."""
    field = TrainConfig.__dataclass_fields__.get(name)
    kinds = [kind.strip() for kind in (field.type if field else "bool").split("|")]
    return any(value is None if kind == "None" else json_value_fits(value, kind) for kind in kinds
               if kind == "None" or kind in JSON_KINDS)


def recipe_checkpoint(out: Path, recipe: dict) -> Path:
    """The final training's checkpoint path, after setting aside a checkpoint and report made with
    another recipe (another schedule or data cannot be continued: that training starts over)."""
    checkpoint, made_with = out / "checkpoint.pt", out / "checkpoint.json"
    asked = training_curve(recipe)
    previous = checkpoint_recipe(out, asked)
    if checkpoint.exists() and previous is not None and previous != asked:
        changed = ", ".join(f"{k} {previous.get(k)} -> {v}" for k, v in asked.items() if previous.get(k) != v)
        why = f"was made with another recipe ({changed})" if previous else f"has an unreadable {made_with.name}"
        tag = set_aside(out, ("checkpoint.pt", "model.pt", "final.json"))
        warnings.warn(f"{checkpoint} {why}; set aside as *.{tag}.*, training from scratch", stacklevel=2)
    atomic_write(made_with, json.dumps(asked))
    return checkpoint


def set_aside(out: Path, names: tuple[str, ...]) -> str:
    """Rename the files `names` of `out` to *.TAG.*, TAG the first of other-recipe, other-recipe-2,
    ... that none of them has yet (an earlier set-aside is never overwritten); returns TAG."""
    for n in itertools.count(1):
        tag = "other-recipe" if n == 1 else f"other-recipe-{n}"
        targets = {name: out / name.replace(".", f".{tag}.", 1) for name in names}
        if not any(target.exists() for target in targets.values()):
            break
    for name, target in targets.items():
        if (out / name).exists():
            (out / name).rename(target)
    return tag


def checkpoint_recipe(out: Path, asked: dict) -> dict | None:
    """The recipe the checkpoint in `out` was made with: from checkpoint.json, or else from the
    report of a training that finished before checkpoint.json existed (the fields it records; the
    rest taken as asked); an unreadable record counts as another recipe ({}), no record at all as
    unknown (None: the checkpoint is continued)."""
    made_with, report = out / "checkpoint.json", out / "final.json"
    try:
        if made_with.exists():
            recipe = json.loads(made_with.read_text())
            return recipe if isinstance(recipe, dict) else {}
        if report.exists():
            r = json.loads(report.read_text())
            return {**asked, **r.get("recipe", {}), "epochs": r["epochs"], "holdout": r.get("holdout", False)}
    except (ValueError, KeyError):
        return {}
    return None


def load_trained(run_dir: Path, number: int) -> tuple[torch.nn.Module, dict]:
    """The fully trained model of a trial (after `train_final`) and what its inputs and outputs
    mean: mean, std and label_names (class indices, for a model saved before names were kept)."""
    trial = load_trial(run_dir, number)
    path = final_dir(run_dir, trial.number) / "model.pt"
    if not path.exists():
        raise SearchError(f"trial {number} of {run_dir} has no final training yet; run "
                          f"`etnas train {command_path(run_dir)} --trial {number}` first")
    try:
        blob = torch.load(path, weights_only=True)
        model = build_model(ArchSpec.from_json(blob["spec"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as e:
        raise SearchError(f"model file {path} is unreadable ({type(e).__name__}); re-train it with "
                          f"`etnas train {command_path(run_dir)} --trial {number}` after deleting it") from None
    names = blob.get("label_names") or [str(c) for c in range(model.spec.num_classes)]
    return model.eval(), {"mean": blob["mean"], "std": blob["std"], "label_names": list(names)}
