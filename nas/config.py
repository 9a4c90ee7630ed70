"""A search's settings, with their defaults (the command line shows these); no heavy imports."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluators.recipes import PROXY_RECIPE
from search_space.presets import PRESETS

from . import SearchError
from .rungs import Rungs


RUNTIMES = ("torch", "onnxruntime")  # what `measure` and the calibration can time
DEFAULT_RUNTIME = "onnxruntime"  # the runtime of the file `export` ships, so the target a search optimises
CALIBRATION_ARCHS = 150  # sampled architectures a calibration times (the presets are added)
EXPORT_FORMATS = ("onnx", "pt2")  # the deployed graphs `export` can write


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
    workers: int = 2
    epochs: float = PROXY_RECIPE["epochs"]  # the top rung's budget
    base_epochs: float = PROXY_RECIPE["base_epochs"]
    eta: int = PROXY_RECIPE["eta"]
    promotion: str = PROXY_RECIPE["promotion"]
    subset: float | None = None
    resolution: int | None = None
    batch_size: int = PROXY_RECIPE["batch_size"]
    lr: float = PROXY_RECIPE["lr"]
    sampler: str = "nsga2"
    seed: int = 0
    space: str | None = None
    ray_address: str | None = None
    gpus_per_trial: float = 0.0  # 0: CPU workers; a share like 0.25 lets four proxies share a GPU
    runs_dir: str = "runs"
    other_latency_models: tuple[str, ...] = ()  # more targets: every trial's latency recorded on each
    presets: tuple[str, ...] = tuple(PRESETS)  # the seed presets trained first, as reference points

    def __post_init__(self) -> None:
        check_preset_names(self.presets)
        if self.trials <= len(self.presets):
            raise SearchError(f"--trials: {self.trials} is below the minimum, {len(self.presets) + 1}: the "
                              f"{len(self.presets)} seed presets come first, then at least one searched trial "
                              f"(fewer presets: --presets)")

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
        return {k: list(v) if isinstance(v, tuple) else v for k in keep for v in [getattr(self, k)]}


def changed_settings(saved: dict, cfg: SearchConfig) -> dict[str, tuple]:
    """The identity settings in which `cfg` differs from a run's config.json, as (saved, new); a
    setting the run predates counts as its default."""
    default = SearchConfig(name="", target_ms=0.0, latency_model="").identity()
    return {k: (saved.get(k, default[k]), v) for k, v in cfg.identity().items() if saved.get(k, default[k]) != v}


def parse_presets(text: str) -> tuple[str, ...]:
    """`--presets`: all, none, or seed preset names separated by commas; SearchError naming what is wrong."""
    if text in ("all", "none"):
        return tuple(PRESETS) if text == "all" else ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    check_preset_names(names or (text,))
    return names


def check_preset_names(names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise SearchError(f"unknown preset {unknown[0]!r}; use all, none, or names from {', '.join(PRESETS)}")


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
    if not percentile and not value > 0:
        raise ValueError(f"{target}: a latency target must be positive milliseconds")
    return ("percentile" if percentile else "ms"), value
