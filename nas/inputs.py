"""What a search reads before its first trial, loaded once: the data, the space widened to the seed
presets, the latency model (this machine's, calibrated and cached, when none is given), the space's
predicted latencies and the target resolved on them."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluators.data import Dataset, load_dataset
from latency_models import LatencyModel
from latency_models.calibrate import calibrate, fingerprint_differences, fingerprint_mismatch
from latency_models.measure import fingerprint
from search_space import SearchSpace, presets, sample
from search_space.presets import SEARCH_SCALE
from search_space.sampling import params_of

from . import SearchError
from .config import (CALIBRATION_ARCHS, DEFAULT_RUNTIME, SearchConfig, parse_target, refuse_other_settings,
                     target_name)
from .rundir import refuse_a_lost_study, refuse_an_unsearchable_run, run_begun, run_config
from .targets import OTHER_TARGETS, load_targets, same_target


def search_space_for(cfg: SearchConfig, shape: tuple[int, int, int]) -> tuple[SearchSpace, dict]:
    """The run's space widened to express its seed presets, and their trial parameters by name. The
    default space is widened by every preset, whichever are trained, so that percentile targets
    and calibrations stay the same; a space file only by the presets the run trains (it is the
    user's own choice of what to search), saying what they add."""
    space = SearchSpace.load(cfg.space, shape[0])
    refs = presets(*shape, width_mult=SEARCH_SCALE, depth_mult=SEARCH_SCALE)
    params = {name: params_of(spec, space) for name, spec in refs.items() if cfg.space is None or name in cfg.presets}
    widened = space
    for p in params.values():
        widened = widened.including(p)
    added = {f.name: sorted(set(getattr(widened, f.name)) - set(getattr(space, f.name)), key=str)
             for f in dataclasses.fields(SearchSpace) if f.name != "max_grid"}
    if cfg.space and any(added.values()):
        warnings.warn(f"{cfg.space}: the seed presets add {', '.join(f'{k} {v}' for k, v in added.items() if v)} "
                      f"to its choices; --presets none searches the file's choices only", stacklevel=2)
    return widened, params


def space_latencies(model: LatencyModel, space: SearchSpace, shape: tuple[int, int, int], seed: int = 0,
                    n: int = 2000) -> np.ndarray:
    """Predicted latency of n architectures sampled from the space: where the space sits on the device."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.predict([sample(rng, space, *shape) for _ in range(n)])


def resolve_target(target: str, latencies: np.ndarray) -> float:
    """`--target-ms` is milliseconds, or `pN`: the N-th percentile of the space's predicted latencies
    (so `p50` is a target that half the space meets, on whatever machine the model was fitted)."""
    try:
        kind, value = parse_target(target)
    except ValueError as e:
        raise SearchError(f"--target-ms {e}") from None
    return round(float(np.percentile(latencies, value)), 4) if kind == "percentile" else value


def check_target(target_ms: float, latencies: np.ndarray) -> None:
    """Refuse a target no architecture of the space can meet, and say what would work."""
    fastest, q10, median = np.min(latencies), np.quantile(latencies, 0.1), np.median(latencies)
    if target_ms < fastest:
        raise SearchError(f"target {target_ms:g} ms is below the fastest architecture of the space "
                          f"({fastest:.3f} ms predicted, of {len(latencies)} sampled); try --target-ms {median:.2f} "
                          f"(half the space meets it) or at least {q10:.2f} (a tenth does)")


def refuse_another_target(name: str, resumed: dict | None, target: dict) -> None:
    """A resumed run predicts latency on the target it was searched for: its trials' latencies on
    two devices, runtimes or precisions would not compare, nor would its front."""
    searched_for = (resumed or {}).get("latency_target")
    if searched_for and not same_target(searched_for, target):
        others = [label for label, record in (resumed or {}).get(OTHER_TARGETS, {}).items()
                  if same_target(record["fingerprint"], target)]
        if others:
            raise SearchError(f"run {name} was searched under the constraint of another of its latency models than "
                              f"{others[0]}; resume it with the --constraint it was searched with")
        differences = "; ".join(fingerprint_differences(searched_for, target, "now"))
        raise SearchError(f"run {name} was searched for {target_name(searched_for)} and would resume on another "
                          f"target ({differences}): resume it with --latency-model of the model it was searched "
                          f"with (--force where this machine is not that device), or choose a new --name; `etnas "
                          f"front RUN --target MODEL` shows its front on another target")


@dataclass
class SearchInputs:
    """The data, the space widened to the presets, the presets' trial parameters, the latency
    model and the space's predicted latencies."""

    data: Dataset
    space: SearchSpace
    preset_params: dict
    model: LatencyModel
    latencies: np.ndarray
    others: dict[str, LatencyModel] = dataclasses.field(default_factory=dict)  # more targets, by label

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.img_size, self.data.in_chans, self.data.num_classes


def load_inputs(cfg: SearchConfig) -> SearchInputs:
    """The inputs of a run whose latency model and target are settled (a resumed run's)."""
    data = load_dataset(cfg.dataset)
    shape = (data.img_size, data.in_chans, data.num_classes)
    space, preset_params = search_space_for(cfg, shape)
    model = LatencyModel.load(cfg.latency_model)
    return SearchInputs(data, space, preset_params, model, space_latencies(model, space, shape, cfg.seed),
                        load_targets(cfg.other_latency_models))


def prepare_search(cfg: SearchConfig, target: str | float, *, runtime: str = DEFAULT_RUNTIME,
                   precision: str = "fp32", calibrate_n: int = CALIBRATION_ARCHS, force: bool = False,
                   on_calibration_row: Callable[[dict, int], None] | None = None,
                   on_note: Callable[[str], None] = lambda note: None) -> tuple[SearchConfig, SearchInputs]:
    """The run's settings completed (latency model, target in ms) and its inputs: without
    `cfg.latency_model`, this machine is calibrated in `runtime` and `precision` (cached under RUNS_DIR/latency);
    `target` is milliseconds or `pN`, the N-th percentile of the space's predicted latencies. A
    latency model measured on another device needs `force`. `on_note` hears what a user should read."""
    if Path(cfg.runs_dir).exists() and not Path(cfg.runs_dir).is_dir():
        raise SearchError(f"--runs-dir {cfg.runs_dir} is a file, not a directory; choose another path")
    refuse_an_unsearchable_run(cfg.run_dir)
    data = load_dataset(cfg.dataset)
    shape = (data.img_size, data.in_chans, data.num_classes)
    if cfg.resolution is not None and cfg.resolution > data.img_size:
        raise SearchError(f"--resolution {cfg.resolution} is above the data's image size, {data.img_size}: the proxy "
                          f"trains at a lower resolution to be cheaper; give at most {data.img_size}")
    cfg = dataclasses.replace(cfg, base_epochs=min(cfg.base_epochs, cfg.epochs))
    resumed = None
    if run_begun(cfg.run_dir):  # a resume that cannot be: refused before a calibration
        refuse_a_lost_study(cfg.run_dir)
        resumed = run_config(cfg.run_dir)
        refuse_other_settings(cfg, resumed, but=("target_ms",))  # the target once resolved
    space, preset_params = search_space_for(cfg, shape)
    if not cfg.latency_model:
        refuse_another_target(cfg.name, resumed, fingerprint("cpu", runtime, 1, 1, data.img_size, precision))
        path, report = calibrate(*shape, Path(cfg.runs_dir) / "latency", space, runtime=runtime, n=calibrate_n,
                                 precision=precision, on_row=on_calibration_row)
        on_note(f"latency model {path}: held-out within ±10% {report['within_10']:.0%}, Kendall tau "
                f"{report['kendall_tau']:.2f} ({report['n_test']} held out)" if report else
                f"reusing latency model {path}")
        cfg = dataclasses.replace(cfg, latency_model=str(path))
    model = LatencyModel.load(cfg.latency_model)
    refuse_another_target(cfg.name, resumed, model.fingerprint)
    mismatch = fingerprint_mismatch(model, data.img_size)
    if mismatch and not force:
        raise SearchError(f"latency model {cfg.latency_model} was measured elsewhere ({'; '.join(mismatch)}); "
                          f"pass --force to search for that device anyway")
    on_note(f"deployment target: {target_name(model.fingerprint)}")
    latencies = space_latencies(model, space, shape, cfg.seed)
    cfg = dataclasses.replace(cfg, target_ms=resolve_target(str(target), latencies))
    if str(target).startswith("p"):
        on_note(f"target {target} of the space's predicted latencies: {cfg.target_ms:g} ms")
    check_target(cfg.target_ms, latencies)  # refused before the workers start
    if resumed:
        refuse_other_settings(cfg, resumed)  # the target too, now in milliseconds
    on_note(cfg.rungs.said())
    others = load_targets(cfg.other_latency_models)
    for label, other in others.items():
        on_note(f"also recorded: latency on {label} ({target_name(other.fingerprint)})")
    return cfg, SearchInputs(data, space, preset_params, model, latencies, others)
