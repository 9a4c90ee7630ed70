"""The export directory: the deployed model as ONNX and torch.export files, each verified by
running it against PyTorch, plus arch.json and a model card."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from evaluators.data import IMAGE_RESIZE, Dataset, pixels_read_as
from evaluators.train import Normalizer
from latency_models.measure import fingerprint_id
from search_space import count_params, deploy
from search_space.export import export_onnx, export_pt2, set_onnx_metadata, verify_onnx
from search_space.quantize import QuantizationError, quantize_int8
from search_space.pretrained import CONFIG_FILE, WEIGHTS_FILE, save_pretrained

from .config import EXPORT_FORMATS, export_formats, target_name
from .final import load_trained, target_precision, target_runtime, time_on_target
from .int8 import CALIBRATION_IMAGES, calibration_batch, fp32_onnx, int8_figures, int8_speedup
from .rundir import final_report, load_trial, run_config, run_dataset
from .schema import Attr
from .targets import OTHER_TARGETS, as_constraint
from . import SearchError

TOLERANCE = 1e-4
EXPORTERS = {"pt2": (export_pt2, "model.pt2"), "onnx": (export_onnx, "model.onnx")}  # in the order written
VERIFIED_BATCHES = (1, 3)  # batch 1 as deployed, and another through the dynamic batch dimension
INT8_FILE = "model.int8.onnx"
TARGETS_FILE = "targets.json"  # the latency on each other target of the search
WRITTEN = ("model.onnx", INT8_FILE, "model.int8.json", "model.pt2", WEIGHTS_FILE, CONFIG_FILE, "arch.json",
           "latency.json", TARGETS_FILE, "MODEL_CARD.md")  # what `export` writes, and so what --force replaces


def verify_pt2(path: Path, reference: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the torch.export file's output and the model's."""
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        return float((program(x) - reference(x)).abs().max())


VERIFIERS = {"onnx": verify_onnx, "pt2": verify_pt2}


def export_trial(run_dir: Path, number: int, out: Path, formats: str | tuple[str, ...] = EXPORT_FORMATS, *,
                 force: bool = False, int8: bool = False,
                 on_stage: Callable[[str, int, int], None] | None = None) -> dict:
    """Deploy the trained model of a trial, export it in `formats` (see `export_formats`), verify
    each file (with `int8`, also its quantization, model.int8.onnx), write the fine-tunable
    weights, arch.json and the card; `on_stage(what, done, total)` before each step. The files
    replace an earlier export's only once all are written: a failed export leaves `out` as it was."""
    formats = export_formats(formats)
    model, meta = load_trained(run_dir, number)  # what cannot be read is one line, before any progress
    final, cfg = final_report(run_dir, number), run_config(run_dir)
    if final is None:
        raise SearchError(f"trial {number} of {run_dir} has a trained model but no final.json (its training was "
                          f"stopped before it was evaluated and timed); re-run `etnas train` on it as before to finish")
    int8_data = run_dataset(run_dir, cfg) if int8 else None  # quantizing calibrates on the run's training images
    stages = ["deploying the trained model", *(f"exporting and verifying {EXPORTERS[f][1]}" for f in written(formats)),
              *(["quantizing, verifying and timing model.int8.onnx"] * int8), "writing fine-tunable weights and card",
              *(["timing model.onnx in onnxruntime"] * ("onnx" in formats)),
              *(["timing the model on the search's other targets"] * bool(cfg.get(OTHER_TARGETS))), "done"]
    report = stage_reporter(stages, on_stage)
    with staged(prepare_out(Path(out), force)) as stage:
        report()
        written_files = write_export(stage, model, meta, final, cfg, formats, report=report,
                                     attrs=load_trial(run_dir, number).user_attrs, int8_data=int8_data)
    report()
    return {"out": str(out), **written_files, "files": sorted(name for name in WRITTEN if (Path(out) / name).exists())}


def write_export(out: Path, model: torch.nn.Module, meta: dict, final: dict, cfg: dict, formats: tuple[str, ...], *,
                 report: Callable[[], None], attrs: dict, int8_data: Dataset | None = None) -> dict:
    """Every file of the export into `out`, `report()` before each step after the first; with
    `int8_data`, model.int8.onnx too, calibrated and verified on it. Returns the max abs
    differences, the shipped latency and the int8 figures."""
    deployed = deploy(model)
    spec = model.spec
    preprocessing = pretrained_cfg(spec, meta)
    metadata = onnx_metadata(spec, preprocessing, meta["label_names"])
    diffs = write_deployed(deployed, out, formats, metadata, report)
    quantized = None
    if int8_data is not None:
        report()
        with fp32_onnx(deployed, out / "model.onnx" if "onnx" in formats else None, metadata) as fp32:
            quantized = write_int8(fp32, deployed, out / INT8_FILE, cfg, meta, int8_data)
    report()
    save_pretrained(model, out, pretrained_cfg=preprocessing, label_names=meta["label_names"])
    (out / "arch.json").write_text(json.dumps({**spec.to_dict(), "short": spec.short(), "arch_id": spec.arch_id,
                                               "normalize": {k: meta[k] for k in ("mean", "std")},
                                               "label_names": meta["label_names"], "pretrained_cfg": preprocessing},
                                              indent=1))
    shipped = None
    if "onnx" in formats:  # the file users ship, timed in its runtime
        report()
        shipped = time_on_target(deployed, timing_config(cfg, "fp32"), "onnxruntime", exported=out / "model.onnx")
        (out / "latency.json").write_text(json.dumps(shipped, indent=1))
    if quantized:
        (out / "model.int8.json").write_text(json.dumps(quantized, indent=1))
    targets = []
    if cfg.get(OTHER_TARGETS):
        report()
        files = {"fp32": out / "model.onnx" if "onnx" in formats else None, "int8": out / INT8_FILE if quantized else None}
        timed = {"fp32": shipped, "int8": quantized and quantized["latency"]}
        targets = other_target_latencies(deployed, cfg, attrs, files, timed)
        (out / TARGETS_FILE).write_text(json.dumps(targets, indent=1))
    card = model_card(spec, final, count_params(deployed), diffs, preprocessing, meta["label_names"], shipped, cfg,
                      quantized, targets)
    (out / "MODEL_CARD.md").write_text(card)
    return {"max_abs_diff": diffs, "shipped_ms": shipped and shipped["measured_ms"], "int8": quantized}


def written(formats: tuple[str, ...]) -> list[str]:
    """The formats asked for, in the order they are written."""
    return [f for f in EXPORTERS if f in formats]


def write_deployed(deployed: torch.nn.Module, out: Path, formats: tuple[str, ...], metadata: dict[str, str],
                   report: Callable[[], None]) -> dict[str, float]:
    """Export each format, the ONNX file with `metadata`, and verify it against PyTorch: the max
    abs difference of each over seeded batches of VERIFIED_BATCHES."""
    diffs = {}
    for fmt in written(formats):
        report()
        export, name = EXPORTERS[fmt]
        export(deployed, out / name)
        if fmt == "onnx":
            set_onnx_metadata(out / name, metadata)
        diffs[fmt] = verified_difference(fmt, out / name, deployed)
    return diffs


def verified_difference(fmt: str, path: Path, deployed: torch.nn.Module) -> float:
    """The file's largest difference from PyTorch over VERIFIED_BATCHES; a file that fails or
    differs beyond TOLERANCE is an error naming the architecture, never shipped silently."""
    spec = deployed.spec
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in VERIFIED_BATCHES:
        x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator)
        try:
            worst = max(worst, VERIFIERS[fmt](path, deployed, x))
        except Exception as e:  # onnxruntime and torch.export raise their own types
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SearchError(f"exported {path.name} fails on a batch of {batch} ({why}); please report this "
                              f"architecture: {spec.short()}") from None
    if worst > TOLERANCE:
        raise SearchError(f"exported {path.name} differs from the PyTorch model by {worst:.2e} "
                          f"(> {TOLERANCE}); please report this architecture: {spec.short()}")
    return worst


def write_int8(fp32: Path, deployed: torch.nn.Module, path: Path, cfg: dict, meta: dict, data: Dataset) -> dict:
    """model.int8.onnx from `fp32` (the export of `deployed`), calibrated on the run's training
    images (`data`), verified on its test images (accuracy, top-1 agreement with fp32), timed in
    onnxruntime, and timed against `fp32` for its speed-up."""
    norm = Normalizer(meta["mean"], meta["std"], deployed.spec.img_size)
    try:
        quantize_int8(fp32, path, calibration_batch(data.x_train, norm))
    except QuantizationError as e:
        raise SearchError(f"{e}; export without --int8") from None
    figures = int8_figures(path, deployed, data.x_test, data.y_test, norm)
    timing = time_on_target(deployed, timing_config(cfg, "int8"), "onnxruntime", exported=path, precision="int8")
    return {**figures, "latency": timing, "vs_fp32": int8_speedup(fp32, path, deployed)}


def timing_config(cfg: dict, precision: str) -> dict:
    """The run's config to time its onnxruntime file of `precision` against: the constraint's where
    it is that precision, else the first other target that is, so that the timing lands on that
    predictor's scale (and the card's target row can show the same figure)."""
    if target_runtime(cfg) == "onnxruntime" and target_precision(cfg) == precision:
        return cfg
    for label, target in cfg.get(OTHER_TARGETS, {}).items():
        fp = target["fingerprint"]
        if fp.get("runtime") == "onnxruntime" and fp.get("precision", "fp32") == precision:
            return as_constraint(cfg, label)
    return cfg


def other_target_latencies(deployed: torch.nn.Module, cfg: dict, attrs: dict, files: dict[str, Path | None],
                           timed: dict[str, dict | None] | None = None) -> list[dict]:
    """Each other target of the run: the search's prediction for this model on it and, where this
    machine is that target, the model timed there (the file it runs, on its predictor's scale; a
    file already timed on that target and scale, `timed` by precision, is not timed again)."""
    predicted = attrs.get(Attr.PRED_MS_TARGETS) or {}
    rows = []
    for label, target in cfg.get(OTHER_TARGETS, {}).items():
        fp = target["fingerprint"]
        row = {"target": label, "device": fp, "pred_ms": predicted.get(label)}
        why = unmeasurable_here(fp, deployed.spec.img_size, files)
        if why:
            row["not_measured"] = why
        else:
            runtime, precision = fp.get("runtime", "torch"), fp.get("precision", "fp32")
            earlier = (timed or {}).get(precision) if runtime == "onnxruntime" else None
            same = earlier and fingerprint_id(earlier["device"]) == fp.get("id") and \
                earlier["reference_ms"] == target["reference_ms"]
            row["timing"] = earlier if same else time_on_target(
                deployed, as_constraint(cfg, label), runtime, precision=precision,
                exported=files[precision] if runtime == "onnxruntime" else None)
        rows.append(row)
    return rows


def unmeasurable_here(fp: dict, img_size: int, files: dict[str, Path | None]) -> str | None:
    """Why this machine cannot time a model on the target of fingerprint `fp` (None: it can)."""
    from latency_models import LatencyModel
    from latency_models.calibrate import fingerprint_mismatch

    mismatch = fingerprint_mismatch(LatencyModel(fingerprint=fp), img_size)
    if mismatch:
        return f"another device ({'; '.join(mismatch)})"
    if (fp.get("threads"), fp.get("batch")) != (1, 1):
        return "etnas times 1 thread at batch 1 only"
    if fp.get("runtime") == "onnxruntime" and files.get(fp.get("precision", "fp32")) is None:
        return "export with --int8 to time model.int8.onnx" if fp.get("precision") == "int8" else \
            "export the onnx format to time model.onnx"
    return None


def stage_reporter(stages: list[str], on_stage: Callable[[str, int, int], None] | None) -> Callable[[], None]:
    """A call that announces the next of `stages` to `on_stage` as (what, stages done, stages in
    all); the last stage is the end."""
    steps = iter(enumerate(stages))

    def next_stage() -> None:
        done, what = next(steps)
        if on_stage is not None:
            on_stage(what, done, len(stages) - 1)
    return next_stage


STAGING = ".export-in-progress"  # inside --out: on the same file system, so its files move in by renaming


def prepare_out(out: Path, force: bool) -> Path:
    """The export folder, created; a folder holding anything (but a killed export's staging) is
    refused unless `force`, which replaces the files an export writes (and nothing else)."""
    if (out / "study.db").exists():
        raise SearchError(f"--out {out} is a run folder; export into a folder of its own")
    if out.is_dir() and any(p.name != STAGING for p in out.iterdir()) and not force:
        raise SearchError(f"--out {out} is not empty; pass --force to replace the model files in it, or "
                          f"choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder the export writes into, whose files replace the export's own in `out` once it has
    written them all; it is removed whatever happens, so an export that fails while writing leaves
    `out` as it was. Held locked: a second export into `out` meanwhile is refused."""
    stage = out / STAGING
    stage.mkdir(exist_ok=True)
    lock = os.open(stage, os.O_RDONLY)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchError(f"another export is writing to {out}; wait for it to end, or choose another "
                              f"--out") from None
        try:
            for leftover in stage.iterdir():  # a killed export's
                leftover.unlink()
            yield stage
            written = {path.name for path in stage.iterdir()}
            for name in written:  # each replaced in one rename
                (stage / name).replace(out / name)
            for name in set(WRITTEN) - written:  # an earlier export's files this one did not write
                (out / name).unlink(missing_ok=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        os.close(lock)


def pretrained_cfg(spec, meta: dict) -> dict:
    """How images become the model's input, in timm's pretrained_cfg keys: squashed to the input
    size as `imagefolder:` loads them, pixels scaled to [0, 1], then (x - mean) / std per channel."""
    return {"input_size": [spec.in_chans, spec.img_size, spec.img_size], **IMAGE_RESIZE,
            "mean": [float(m) for m in meta["mean"]], "std": [float(s) for s in meta["std"]],
            "num_classes": spec.num_classes}


def onnx_metadata(spec, preprocessing: dict, label_names: list[str]) -> dict[str, str]:
    """What a user of model.onnx alone needs: class names, preprocessing and the architecture."""
    return {"label_names": json.dumps(label_names), "pretrained_cfg": json.dumps(preprocessing),
            "etnas.spec": spec.to_json(), "etnas.arch_id": spec.arch_id}


def latency_rows(final: dict, shipped: dict | None, cfg: dict, quantized: dict | None = None,
                 targets: list[dict] | None = None) -> str:
    """The card's latency rows: the shipped files timed in onnxruntime, the final training's timing
    in the run's target runtime, the search's prediction beside the file of its target, and each
    other target of the search (`other_target_latencies`)."""
    rows = [f"| search target | {target_name(cfg.get('latency_target') or final['device'])} |"]
    timed = {"model.onnx": shipped, INT8_FILE: quantized and quantized["latency"]}
    for name, timing in timed.items():
        if timing:
            rows.append(f"| {name} latency | {measured_text(timing)}; timed here: {target_name(timing['device'])} |")
    if quantized:
        rows.append(f"| {INT8_FILE} accuracy | {quantized['test_acc_int8']:.4f} test "
                    f"({100 * (quantized['test_acc_int8'] - final['test_acc']):+.2f} points vs fp32), top-1 "
                    f"agreement with fp32 {quantized['int8_top1_agreement']:.1%} (calibrated on "
                    f"{CALIBRATION_IMAGES} training images) |")
        vs, fp32 = quantized["vs_fp32"], "model.onnx" if shipped else "the fp32 ONNX graph (not exported)"
        slower = "; int8 is the slower one on this CPU" if vs["speedup"] < 1 else ""
        rows.append(f"| {INT8_FILE} vs {fp32} | {vs['speedup']:.2f}x the speed ({vs['int8_ms']:.3f} vs "
                    f"{vs['fp32_ms']:.3f} ms medians, the two timed interleaved here{slower}) |")
    pred = f"{final['pred_ms']:.3f} ms"
    target_file = INT8_FILE if target_precision(cfg) == "int8" else "model.onnx"
    if timed[target_file] and target_runtime(cfg) == "onnxruntime":
        ms = timed[target_file]["measured_ms"]
        pred += f" ({(final['pred_ms'] - ms) / ms:+.1%} vs {target_file})"
    rows += [f"| predicted latency | {pred} |",
             f"| measured after training | {measured_text(final)}; {final['pred_rel_err']:+.1%} predicted vs "
             f"measured; {target_name(final['device'])} |"]
    return "\n".join(rows + [other_target_row(t) for t in targets or []])


def measured_text(timing: dict) -> str:
    """A timing as the card gives it: median and p10-p90 as timed, then, where it was timed beside
    the anchor, on the predictor's scale (the speed its table was measured at), the figure that
    predictions are compared with. Rows that lead with the timing as taken compare with each other."""
    def spread(factor: float) -> str:
        return (f"{timing['measured_ms'] * factor:.3f} ms median (p10-p90 {timing['p10_ms'] * factor:.3f}-"
                f"{timing['p90_ms'] * factor:.3f})")

    if not timing.get("on_predictor_scale"):
        return f"{spread(1.0)} as timed"
    if not (timing.get("anchor_ms") and timing.get("reference_ms")):  # a report from before they were kept
        return f"{spread(1.0)} on the predictor's scale"
    return f"{spread(timing['anchor_ms'] / timing['reference_ms'])} as timed, {timing['measured_ms']:.3f} ms on the " \
           f"predictor's scale"


def other_target_row(target: dict) -> str:
    """A card row: the latency on another target of the search, predicted and, where timed here, measured."""
    pred = "no prediction recorded" if target["pred_ms"] is None else f"{target['pred_ms']:.3f} ms predicted"
    timing = target.get("timing")
    if timing is None:
        measured = f"not measured here: {target['not_measured']}"
    else:
        measured = f"measured here {measured_text(timing)}"
        if target["pred_ms"] is not None:
            measured += f", {(target['pred_ms'] - timing['measured_ms']) / timing['measured_ms']:+.1%} predicted vs measured"
    return f"| latency on target {target['target']} | {pred}; {measured}; {target_name(target['device'])} |"


def training_rows(final: dict) -> str:
    """The card's rows on how the model was trained: on which images, how long, with what recipe."""
    examples = f"{final['trained_examples']:,} training images" if "trained_examples" in final else "training images"
    part = ("the search's training part; its validation part held out" if final.get("holdout")
            else "the whole training split")
    rows = [f"| trained on | {examples} ({part}), {final['epochs']:g} epochs |"]
    recipe = final.get("recipe")
    if recipe:
        augment = ", ".join(f"{k} {recipe[k]:g}" for k in ("mixup", "cutmix") if recipe.get(k))
        rows.append(f"| recipe | AdamW, peak lr {recipe['lr']:g}, weight decay {recipe['weight_decay']:g}, batch "
                    f"{recipe['batch_size']}; RandAugment {recipe.get('randaugment') or 'off'}"
                    f"{'; ' + augment if augment else ''} |")
    return "\n".join(rows)


def model_card(spec, final: dict, params: int, diffs: dict, preprocessing: dict, label_names: list[str],
               shipped: dict | None, cfg: dict, quantized: dict | None = None, targets: list[dict] | None = None) -> str:
    """MODEL_CARD.md: the figures, the input and output, and how to load and fine-tune the files
    written (the formats in `diffs`)."""
    c, h = spec.in_chans, spec.img_size
    mean, std = ([round(v, 4) for v in preprocessing[k]] for k in ("mean", "std"))
    checked = f"{', '.join(map(str, VERIFIED_BATCHES))}: {', '.join(f'{k} {v:.1e}' for k, v in diffs.items())}"
    graphs = " and ".join(EXPORTERS[f][1] for f in written(tuple(diffs)))
    loading = "\n".join(LOADING[f].format(c=c, h=h) for f in written(tuple(diffs)))
    return f"""# {spec.short()}

Architecture `{spec.arch_id}` found by etnas (hardware-aware NAS for efficient vision transformers).

| figure | value |
|---|---|
| test accuracy | {final['test_acc']:.4f} on the test split of {final['dataset']} |
{training_rows(final)}
{latency_rows(final, shipped, cfg, quantized, targets)}
| FLOPs (multiply-adds) | {final['flops']:,} |
| parameters (deployed) | {params:,} |
| export check | max abs diff vs PyTorch at batch sizes {checked} |

Input: float32 `[batch, {c}, {h}, {h}]`: {pixels_read_as(cfg['dataset'], h)}, divided by
255, then per channel `(x - mean) / std` with mean {mean} and std {std} (an image of another size
is first squashed to {h}x{h}, bicubic, as `pretrained_cfg` says). Output: logits `[batch,
{spec.num_classes}]` for the classes {label_names_text(label_names)}. Norms are folded into the
adjacent layers (deploy-time re-parameterization), so the deployed graphs ({graphs}) are inference
only{ONNX_METADATA_NOTE * ("onnx" in diffs)}. The full spec is in `arch.json`.

## Load it (no etnas needed)

```python
{loading}```

## Fine-tune it

`{WEIGHTS_FILE}` holds the trainable weights (norms not folded) and `{CONFIG_FILE}` the spec,
preprocessing (`pretrained_cfg`, timm's keys) and class names:

```python
import etnas
model = etnas.create_model("this folder")                 # trained weights, train mode
model = etnas.create_model("this folder", num_classes=5)  # a new classifier for 5 classes
model.pretrained_cfg, model.label_names                   # preprocessing, class names
```
"""


ONNX_METADATA_NOTE = ("; model.onnx carries the class names and preprocessing in its metadata\n(`label_names`, "
                      "`pretrained_cfg`)")
LOADING = {  # the card's code loading each format, in the order written
    "pt2": """import torch
program = torch.export.load("model.pt2").module()
logits = program(torch.zeros(1, {c}, {h}, {h}))
""",
    "onnx": """import json, onnxruntime as ort, numpy as np
session = ort.InferenceSession("model.onnx")
logits = session.run(None, {{"images": np.zeros((1, {c}, {h}, {h}), np.float32)}})[0]
label_names = json.loads(session.get_modelmeta().custom_metadata_map["label_names"])
"""}


def label_names_text(names: list[str], shown: int = 20) -> str:
    listed = ", ".join(f"`{n}`" for n in names[:shown])
    return listed + (f" and {len(names) - shown} more (all in config.json)" if len(names) > shown else "")
