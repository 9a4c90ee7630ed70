"""The search space: operators, the architecture spec, the model builder, presets, sampling, deploy."""
from .costs import count_flops, count_params
from .deploy import deploy
from .model import NASViT, build_model
from .presets import PRESETS, preset, presets
from .sampling import SearchSpace, sample
from .spec import ArchSpec, SpecError, StageSpec, load_specs

__all__ = ["ArchSpec", "StageSpec", "SpecError", "NASViT", "build_model", "deploy", "presets",
           "preset", "PRESETS", "sample", "SearchSpace", "count_flops", "count_params", "load_specs"]
