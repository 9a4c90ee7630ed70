"""Latency targets besides the search's constraint: each trial's predicted latency on every device
the run was given a latency model of, and the front re-specialized to any target, one recorded
during the search or a latency model fitted after it. Accuracy does not depend on the device, so
no target needs a training of its own."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from latency_models import LatencyModel
from search_space import ArchSpec

from . import SearchError
from .records import pareto_front
from .schema import TrialState


OTHER_TARGETS = "other_targets"  # config.json: each other target's fingerprint and reference speed, by label


def target_label(path: str | Path) -> str:
    """A target's name: its latency model's file stem (runs/latency/cpu-int8.model: cpu-int8)."""
    return Path(path).stem


def constraint_and_others(models: list[str], constraint: str | None) -> tuple[str, tuple[str, ...]]:
    """The constraint's latency model ('' to calibrate one) and the other targets' models: the first
    given unless `constraint` names another by its label."""
    if constraint is None:
        return (models[0], tuple(models[1:])) if models else ("", ())
    chosen = [m for m in models if target_label(m) == constraint]
    if not chosen:
        raise SearchError(f"--constraint {constraint} names none of the --latency-model files "
                          f"({', '.join(target_label(m) for m in models) or 'none given'}); give its file stem")
    return chosen[0], tuple(m for m in models if m != chosen[0])


def load_targets(paths: tuple[str, ...]) -> dict[str, LatencyModel]:
    """The latency models by label; two files of one stem would be indistinguishable."""
    labels = [target_label(p) for p in paths]
    if len(set(labels)) < len(labels):
        raise SearchError(f"latency models {', '.join(paths)} share a file name; give each target a file name "
                          f"of its own (it names the target)")
    return {label: LatencyModel.load(p) for label, p in zip(labels, paths)}


def target_records(models: dict[str, LatencyModel]) -> dict[str, dict]:
    """What a run's config keeps of each other target: the device it stands for and the speed its
    predictions are on (so that `export` can time a model on it where this machine is that device)."""
    return {label: {"fingerprint": m.fingerprint, "reference_ms": m.reference_ms} for label, m in models.items()}


def same_target(a: dict, b: dict) -> bool:
    """Whether two device fingerprints are one target: by their ids where both have one (a timing
    table's), else by their content."""
    if a.get("id") and b.get("id"):
        return a["id"] == b["id"]
    return {k: v for k, v in a.items() if k != "id"} == {k: v for k, v in b.items() if k != "id"}


def remember_targets(cfg: dict, models: dict[str, LatencyModel]) -> dict:
    """The run's config with the targets first given when it is resumed added (their latencies are
    recorded from then on); a label given again must name the same model."""
    known, given = cfg.get(OTHER_TARGETS, {}), target_records(models)
    for label in set(known) & set(given):
        before, now = known[label], given[label]
        if not same_target(before["fingerprint"], now["fingerprint"]) or before["reference_ms"] != now["reference_ms"]:
            raise SearchError(f"latency model {label} is not the one this run recorded as target {label} (another "
                              f"device or fit); resume with the original file, or give this one another file name "
                              f"to add it as a new target")
    added = {label: record for label, record in given.items() if label not in known}
    if not added:
        return cfg
    return {**cfg, OTHER_TARGETS: {**known, **added}}  # recorded in the study, then copied to config.json


def as_constraint(cfg: dict, label: str) -> dict:
    """The run's config with another target in the constraint's place: what a timing on that target
    reads (its device, and the reference speed its predictions are on)."""
    target = cfg[OTHER_TARGETS][label]
    return {**cfg, "latency_target": target["fingerprint"], "latency_fingerprint": target["fingerprint"].get("id"),
            "latency_reference_ms": target["reference_ms"]}


def predictions(models: dict[str, LatencyModel], spec: ArchSpec) -> dict[str, float]:
    """One spec's predicted latency on each target, as a trial records it."""
    return {label: predictions_of(model, [spec])[0] for label, model in models.items()}


def predictions_of(model: LatencyModel, specs: list[ArchSpec]) -> list[float]:
    with warnings.catch_warnings():  # a spec outside a model's measured range is still predicted
        warnings.simplefilter("ignore")
        return [float(v) for v in model.predict(specs)] if specs else []


def warn_of_another_input_size(model: LatencyModel, specs: list[ArchSpec], path: str) -> None:
    """Latency depends on the input size: a model timed on other inputs predicts these specs by
    extrapolation (a search refuses such a model without --force)."""
    measured, sizes = model.fingerprint.get("img_size"), sorted({s.img_size for s in specs})
    if measured is not None and set(sizes) - {measured}:
        warnings.warn(f"latency model {path} was measured on {measured}x{measured} inputs and this run's models "
                      f"take {', '.join(f'{n}x{n}' for n in sizes)}: their latencies on it are extrapolated; fit a "
                      f"model on inputs of this run's size for figures to rely on", stacklevel=2)


def recorded(row: dict) -> dict[str, float]:
    """A trials.csv row's latencies on the other targets (none for a trial recorded without them)."""
    return json.loads(row["pred_ms_targets"]) if isinstance(row.get("pred_ms_targets"), str) else {}


def recorded_targets(rows: list[dict]) -> set[str]:
    return {label for r in rows for label in recorded(r)}


def front_on_target(rows: list[dict], target: str, target_ms: float | None = None) -> tuple[list[dict], str]:
    """The top-rung Pareto front with every trial's latency on `target`: a label recorded during the
    search, or a latency model file (its predictions made now). Returns (front, what the latency is)."""
    trained = [{**r, "val_acc": float(r["val_acc"])} for r in rows
               if r["state"] == TrialState.COMPLETE and isinstance(r["spec"], str) and r["val_acc"] == r["val_acc"]
               and r["val_acc"] is not None]  # top-rung trials (NaN: absent, in a trials.csv read back)
    if target in recorded_targets(rows):
        latency = [recorded(r).get(target) for r in trained]
        source = f"{target}, recorded during the search"
    elif Path(target).is_file():
        model, specs = LatencyModel.load(target), [ArchSpec.from_json(r["spec"]) for r in trained]
        warn_of_another_input_size(model, specs, target)
        latency, source = predictions_of(model, specs), f"{target_label(target)}, predicted now"
    else:
        known = ", ".join(sorted(recorded_targets(rows))) or "none recorded"
        raise SearchError(f"--target {target} is neither a target of this run ({known}) nor a latency model file; "
                          f"the front on the run's own target is `etnas front RUN` without --target")
    moved = [{**r, "pred_ms": ms} for r, ms in zip(trained, latency) if ms is not None]
    front = pareto_front(moved, math.inf if target_ms is None else target_ms)
    return [{"trial": int(r["number"]), **{k: r[k] for k in POINT_FIELDS}, "preset": r["preset"] if isinstance(
        r["preset"], str) else None} for r in front], source


POINT_FIELDS = ("arch_id", "short", "val_acc", "pred_ms", "flops", "params")
