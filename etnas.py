"""etnas from Python: search, train and export as the command line does them, and an exported
model back as a trainable one. Each call imports what it needs, so `import etnas` is cheap."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.config import CALIBRATION_ARCHS, DEFAULT_RUNTIME, EXPORT_FORMATS

__all__ = ["search", "train", "export", "create_model"]


def search(dataset: str = "digits", target: str | float = "p50", *, name: str = "run", runs_dir: str | Path = "runs",
           latency_model: str | Path | None = None, runtime: str = DEFAULT_RUNTIME,
           calibrate_n: int = CALIBRATION_ARCHS, force: bool = False,
           on_progress: Callable[[Any], None] | None = None, **settings: Any) -> list[dict]:
    """Run (or resume) the search `etnas run` runs; returns its front (trial, val_acc, pred_ms, ...).
    `target` is milliseconds or `pN`; `settings` are `nas.config.SearchConfig`'s fields (trials,
    workers, epochs, sampler, ...); without `latency_model` this machine is calibrated in `runtime`.
    `on_progress` gets a `nas.search.SearchProgress` after every event."""
    from nas.config import SearchConfig
    from nas.inputs import prepare_search
    from nas.search import run_search

    started = time.monotonic()  # `minutes` counts the calibration too
    cfg = SearchConfig(name=name, target_ms=0.0, latency_model=str(latency_model or ""), dataset=dataset,
                       runs_dir=str(runs_dir), **settings)
    cfg, inputs = prepare_search(cfg, target, runtime=runtime, calibrate_n=calibrate_n, force=force, on_note=print)
    return run_search(cfg, on_progress, inputs, started)


def train(run_dir: str | Path, trial: int | str = "best", *, epochs: float | None = None, device: str = "cpu",
          **recipe: Any) -> dict:
    """Train a trial of a run with the final recipe (`etnas train`): the options left out (None) are
    its earlier final training's, which is then continued or re-measured; returns its report."""
    from nas.final import train_final
    from nas.rundir import resolve_trial

    return train_final(Path(run_dir), resolve_trial(Path(run_dir), str(trial)), epochs, device, **recipe)


def export(run_dir: str | Path, out: str | Path, trial: int | str = "best", *,
           formats: str | tuple[str, ...] = EXPORT_FORMATS, force: bool = False, int8: bool = False) -> dict:
    """Export a trained trial (`etnas export`): verified model.onnx / model.pt2 (`formats`: a
    sequence or a comma-separated string, as the command line's), the fine-tunable
    model.safetensors and config.json, arch.json and MODEL_CARD.md; with `int8`, model.int8.onnx too."""
    from nas.package import export_trial
    from nas.rundir import resolve_trial

    return export_trial(Path(run_dir), resolve_trial(Path(run_dir), str(trial)), Path(out), formats, force=force,
                        int8=int8)


def create_model(path: str | Path, *, num_classes: int | None = None, pretrained: bool = True):
    """The trainable model of an `etnas export` folder (see `search_space.pretrained.create_model`)."""
    from search_space.pretrained import create_model as from_files

    return from_files(path, num_classes=num_classes, pretrained=pretrained)
