"""A latency model for this machine when the user has none: measure, fit, and cache it under
runs/latency/ keyed by the device fingerprint, so later runs reuse it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from search_space import ArchSpec, SearchSpace

from .measure import anchor_spec, fingerprint, fingerprint_id, measure_all, specs_to_time
from .predictor import FORMAT_VERSION, LatencyModel, ModelFileError
from .table import read_table
from .validate import fit_and_report


def cache_stem(specs: list[ArchSpec], cache_dir: Path, space: SearchSpace, *, runtime: str,
               precision: str = "fp32") -> Path:
    """The cache path, without suffix, of a calibration timing `specs` (`specs_to_time`'s), keyed on
    everything that decides what is measured: the model format, the device fingerprint (runtime
    and precision included), the input shape, the space, the architectures timed (its sample and the
    presets) and the anchor whose latency sets the reference speed."""
    like = specs[0]
    fp = fingerprint("cpu", runtime, 1, 1, like.img_size, precision)
    timed = json.dumps([dataclasses.asdict(space), [s.arch_id for s in specs], anchor_spec(like).arch_id],
                       sort_keys=True)
    digest = hashlib.sha1(timed.encode()).hexdigest()[:8]
    return Path(cache_dir) / f"auto-v{FORMAT_VERSION}-{fingerprint_id(fp)}-{like.in_chans}x{like.img_size}-{digest}"


def calibrate(img_size: int, in_chans: int, num_classes: int, cache_dir: Path, space: SearchSpace, *,
              runtime: str, n: int, seed: int = 0, precision: str = "fp32",
              on_row: Callable[[dict, int], None] | None = None) -> tuple[Path, dict | None]:
    """Return (model path, fit report or None when the cached model was reused)."""
    specs = specs_to_time(img_size, in_chans, num_classes, space, n=n, seed=seed)
    stem = cache_stem(specs, cache_dir, space, runtime=runtime, precision=precision)
    model_path, csv_path = stem.with_suffix(".model"), stem.with_suffix(".csv")
    if model_path.exists() and loads(model_path):
        return model_path, None
    measure_all(specs, csv_path, runtime=runtime, device="cpu", threads=1, batch=1, on_row=on_row,
                precision=precision)  # resumes: a model of an older tally is re-fitted from its timings
    model, report = fit_and_report(read_table(csv_path), seed=seed, source=csv_path)
    model.save(model_path)
    return model_path, report


def loads(path: Path) -> bool:
    """Whether this version of etnas can use a cached latency model."""
    try:
        LatencyModel.load(path)
    except ModelFileError:
        return False
    return True


def fingerprint_mismatch(model: LatencyModel, img_size: int) -> list[str]:
    """Where the model's device fingerprint differs from this machine's in the model's own runtime,
    threads and batch."""
    here = fingerprint(model.fingerprint.get("device", "cpu"), model.fingerprint.get("runtime", "torch"),
                       model.fingerprint.get("threads", 1), model.fingerprint.get("batch", 1), img_size,
                       model.fingerprint.get("precision", "fp32"))
    return fingerprint_differences(model.fingerprint, here, "here")


def fingerprint_differences(first: dict, second: dict, second_named: str) -> list[str]:
    """The fields (the id aside) in which two device fingerprints differ, in words."""
    return [f"{k} {first.get(k)!r} vs {second_named} {second.get(k)!r}" for k in sorted(set(first) | set(second))
            if k != "id" and first.get(k) != second.get(k)]
