"""A search's settings, with their defaults (the command line shows these); no heavy imports."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from evaluators.recipes import PROXY_EVALUATION, PROXY_EVALUATION_BEFORE, PROXY_RECIPE
from search_space.presets import PRESETS
from search_space.spec import MIN_IMG_SIZE

from . import SearchError
from .rungs import PROMOTION_RULES, Rungs
from .samplers import SAMPLERS


RUNTIMES = ("torch", "onnxruntime")  # what `measure` and the calibration can time
DEFAULT_RUNTIME = "onnxruntime"  # the runtime of the file `export` ships, so the target a search optimises
CALIBRATION_ARCHS = 150  # sampled architectures a calibration times (the presets are added)
EXPORT_FORMATS = ("onnx", "pt2")  # the deployed graphs `export` can write
MAX_MINUTES = 1e5  # --minutes: about 70 days, beyond which a limit means none (and Ray's waits overflow)
# A setting's bounds, as (low, high, low allowed), where None is not its default: checked for the
# command line and the Python API alike, before a run writes anything
BOUNDS = {"epochs": (0, math.inf, False), "base_epochs": (0, math.inf, False), "lr": (0, math.inf, False),
          "subset": (0, 1, False), "budget_epochs": (0, math.inf, False), "minutes": (0, MAX_MINUTES, False),
          "eta": (2, math.inf, True), "workers": (1, math.inf, True), "seed": (0, math.inf, True),
          "resolution": (MIN_IMG_SIZE, math.inf, True), "gpus_per_trial": (0, math.inf, True)}


def export_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """The formats `export` writes, named as a comma-separated string or a sequence: at least one,
    each of EXPORT_FORMATS."""
    names = tuple(f for f in (formats.split(",") if isinstance(formats, str) else formats) if f)
    unknown = sorted(set(names) - set(EXPORT_FORMATS))
    if unknown or not names:
        raise SearchError(f"export formats {formats!r}: choose a comma-separated list of {', '.join(EXPORT_FORMATS)}")
    return names


def interval_text(low: float, high: float, low_allowed: bool) -> str:
    """An interval as a message names it: (0, 1], [2, inf) (infinity is never allowed)."""
    return f"{'[' if low_allowed else '('}{low:g}, {high:g}{')' if math.isinf(high) else ']'}"


def check_bounds(name: str, value: object, low: float, high: float, low_allowed: bool, whole: bool) -> None:
    """SearchError unless `value` is None (the default: none) or a finite number within the bounds."""
    if value is None:
        return
    kind = int if whole else (int, float)
    inside = low <= value <= high if low_allowed else low < value <= high
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not inside:
        raise SearchError(f"{name}: {value!r} is not {'an integer' if whole else 'a number'} in "
                          f"{interval_text(low, high, low_allowed)}")


def target_name(fp: dict) -> str:
    """The deployment target a fingerprint stands for, in words: device, runtime, precision,
    threads, batch."""
    runtime = f"onnxruntime {fp['onnxruntime']}" if fp.get("runtime") == "onnxruntime" else f"torch {fp.get('torch')} eager"
    device = (fp.get("gpu") or fp.get("cpu")) if fp.get("device") == "cuda" else f"{fp.get('cpu')} CPU"
    return f"{runtime} {fp.get('precision', 'fp32')} on {device}, {fp.get('threads')} thread(s), batch {fp.get('batch')}"


@dataclass(frozen=True)
class SearchConfig:
    name: str
    target_ms: float
    latency_model: str  # the constraint's target
    dataset: str = "digits"
    trials: int = 30
    budget_epochs: float | None = None  # training epochs over all candidates; None: --trials alone stops
    minutes: float | None = None  # wall-clock limit of the run, its calibration included; None: no limit
    workers: int = 2
    epochs: float = PROXY_RECIPE["epochs"]  # the top rung's budget
    base_epochs: float = PROXY_RECIPE["base_epochs"]
    eta: int = PROXY_RECIPE["eta"]
    promotion: str = PROXY_RECIPE["promotion"]
    subset: float | None = None
    resolution: int | None = None
    batch_size: int = PROXY_RECIPE["batch_size"]
    lr: float = PROXY_RECIPE["lr"]
    sampler: str = "tpe"  # it found the better front (BENCHMARKS.md, "The README's CIFAR example")
    seed: int = 0
    space: str | None = None
    ray_address: str | None = None
    gpus_per_trial: float = 0.0  # 0: CPU workers; a share like 0.25 lets four proxies share a GPU
    runs_dir: str = "runs"
    other_latency_models: tuple[str, ...] = ()  # more targets: every trial's latency recorded on each
    presets: tuple[str, ...] = tuple(PRESETS)  # the seed presets trained first, as reference points

    def __post_init__(self) -> None:
        object.__setattr__(self, "presets", preset_names(self.presets))  # one spelling, in PRESETS order
        if self.trials <= len(self.presets):
            raise SearchError(f"--trials: {self.trials} is below the minimum, {len(self.presets) + 1}: the "
                              f"{len(self.presets)} seed presets come first, then at least one searched trial "
                              f"(fewer presets: --presets)")
        if self.batch_size < 2:
            raise SearchError(f"--batch-size: {self.batch_size} is below the minimum, 2 (a BatchNorm on a 1x1 token "
                              f"grid needs two samples a batch)")
        for name, (low, high, low_allowed) in BOUNDS.items():
            check_bounds(name, getattr(self, name), low, high, low_allowed,
                         whole=self.__dataclass_fields__[name].type.startswith("int"))
        for name, choices in (("promotion", PROMOTION_RULES), ("sampler", SAMPLERS)):
            if getattr(self, name) not in choices:
                raise SearchError(f"{name}: {getattr(self, name)!r}; choose one of {', '.join(choices)}")

    @classmethod
    def defaults(cls) -> SearchConfig:
        """The settings a run gets when it names none (its name, target and latency model left empty)."""
        return cls(name="", target_ms=0.0, latency_model="")

    @property
    def rungs(self) -> Rungs:
        return Rungs(min(self.base_epochs, self.epochs), self.epochs, self.eta)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def identity(self) -> dict:
        """The settings a resumed run must share with the original, as config.json holds them."""
        keep = ("target_ms", "dataset", "epochs", "base_epochs", "eta", "promotion", "subset", "resolution",
                "batch_size", "lr", "sampler", "seed", "space", "presets")
        settings = {k: getattr(self, k) for k in keep}
        return {**settings, "presets": list(self.presets),  # JSON has no tuples
                "proxy_evaluation": PROXY_EVALUATION}


# Identity settings added after runs were made, with the value those runs had: a resumed run that
# predates one is compared as having it. Others missing from an old run's config.json differ.
PREDATES = {"presets": list(PRESETS), "proxy_evaluation": PROXY_EVALUATION_BEFORE}


def changed_settings(saved: dict, cfg: SearchConfig) -> dict[str, tuple]:
    """The identity settings in which `cfg` differs from a run's config.json, as (saved, new)."""
    before = {**PREDATES, **saved}
    return {k: (before.get(k), v) for k, v in cfg.identity().items() if before.get(k) != v}


def refuse_other_settings(cfg: SearchConfig, saved: dict, *, but: tuple[str, ...] = ()) -> None:
    """SearchError naming each identity setting (apart from `but`) in which `cfg` differs from a
    run's config.json `saved`, and how to resume instead."""
    changed = {k: v for k, v in changed_settings(saved, cfg).items() if k not in but}
    if "proxy_evaluation" in changed:
        raise SearchError(f"run {cfg.name} was searched by an earlier etnas, its proxies read with "
                          f"{changed['proxy_evaluation'][0]} where this version reads them with "
                          f"{PROXY_EVALUATION}, so its accuracies do not compare with new ones; choose a new "
                          f"--name (its front, train and export still work)")
    if changed:
        raise SearchError(f"run {cfg.name} already exists with other settings "
                          f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                          f"re-run with the original settings to resume, or choose a new --name")


def preset_names(chosen: str | Iterable[str]) -> tuple[str, ...]:
    """The seed presets `chosen` names, in PRESETS order: `all`, `none`, names separated by commas
    (`--presets`), or a sequence of names; SearchError naming an unknown one."""
    if isinstance(chosen, str):
        if chosen in ("all", "none"):
            return tuple(PRESETS) if chosen == "all" else ()
        chosen = [name.strip() for name in chosen.split(",") if name.strip()] or [chosen]
    unknown = [name for name in chosen if name not in PRESETS]
    if unknown:
        raise SearchError(f"unknown preset {unknown[0]!r}; use all, none, or names from {', '.join(PRESETS)}")
    return tuple(name for name in PRESETS if name in chosen)


def parse_target(target: str) -> tuple[str, float]:
    """`--target-ms`: ("ms", milliseconds > 0) or ("percentile", N in (0, 100]) for `pN`; ValueError
    with the reason otherwise."""
    percentile = target.startswith("p")
    try:
        value = float(target[1:] if percentile else target)
    except ValueError:
        raise ValueError(f"{target!r} is neither milliseconds nor a percentile like p50") from None
    if percentile and not 0 < value <= 100:
        raise ValueError(f"{target}: a percentile must lie in (0, 100]")
    if not percentile and not 0 < value < float("inf"):
        raise ValueError(f"{target}: a latency target must be positive, finite milliseconds")
    return ("percentile" if percentile else "ms"), value
