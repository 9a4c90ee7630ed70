"""The search space: operators, the architecture spec, the model builder, presets, sampling, deploy.

The spec, the presets and sampling need no torch; the names that build or fold a model load it on
first use (PEP 562), so reading a spec or counting the presets stays fast."""
from __future__ import annotations

import importlib

from .presets import PRESETS, preset, presets
from .sampling import SearchSpace, sample
from .spec import ArchSpec, SpecError, StageSpec, load_specs

_NEEDS_TORCH = {"count_flops": "costs", "count_params": "costs", "deploy": "deployment", "NASViT": "model",
                "build_model": "model"}

__all__ = ["ArchSpec", "StageSpec", "SpecError", "NASViT", "build_model", "deploy", "presets", "preset", "PRESETS",
           "sample", "SearchSpace", "count_flops", "count_params", "load_specs"]


def __getattr__(name: str):
    if name not in _NEEDS_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NEEDS_TORCH[name]}", __name__), name)
