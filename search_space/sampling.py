"""What is searched: the space's bounds and `sample()`, which draws a valid spec from an Optuna
trial (conditional parameters) or from a seeded RNG through the same code path."""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .operators import ATTENTIONS, attention_names, norm_names
from .spec import (DOWNSAMPLE_NAMES, JSON_KINDS, MAX_STAGES, PATCH_SIZES, PLUGIN_HINT, STEM_NAMES, ArchSpec,
                   SpecError, StageSpec, can_downsample, coarsest_patch, json_value_fits, stage_grids)


@dataclass(frozen=True)
class SearchSpace:
    """Choices per axis. Override any of them with a JSON file (`SearchSpace.load`). The norms and
    attentions default to every registered operator (`search_space.operators`)."""

    stages: tuple[int, ...] = (1, 2, 3)
    patch: tuple[int, ...] = (1, 2, 4, 8)
    stems: tuple[str, ...] = STEM_NAMES
    downsamples: tuple[str, ...] = DOWNSAMPLE_NAMES
    max_grid: int = 16  # patches giving a finer token grid than this are not offered
    widths: tuple[int, ...] = (32, 48, 64, 96, 128, 160, 192)
    depths: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    norms: tuple[str, ...] = field(default_factory=norm_names)
    attentions: tuple[str, ...] = field(default_factory=attention_names)
    heads: tuple[int, ...] = (1, 2, 3, 4)
    key_dims: tuple[int, ...] = (8, 16, 32)
    value_ratios: tuple[int, ...] = (1, 2)
    ffns: tuple[int, ...] = (1, 2, 3)
    mlp_ratios: tuple[float, ...] = (2.0, 3.0, 4.0)
    dwconv: tuple[bool, ...] = (False, True)
    skip_fractions: tuple[float, ...] = (0.0, 0.25, 0.5)

    def including(self, params: dict[str, Any]) -> SearchSpace:
        """This space with the values of `params` (as from `params_of`) added to their axes."""
        axes = {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "max_grid"}
        for name, value in params.items():
            axis = axes[AXIS_OF[name.split(".")[-1]]]
            if value not in axis:
                axis.append(value)
        return dataclasses.replace(self, **{k: tuple(v) for k, v in axes.items()})

    def patches_for(self, img_size: int) -> list[int]:
        """The patch choices that cut the image into a token grid of at most `max_grid` a side."""
        return [p for p in self.patch if img_size % p == 0 and img_size // p <= self.max_grid]

    def sampled_patches(self, img_size: int) -> list[int]:
        """The patches `sample` draws from: `patches_for`, or the coarsest that divides sizes like 33."""
        return self.patches_for(img_size) or [coarsest_patch(img_size)]

    def unusable_choices(self, img_size: int) -> list[str]:
        """Choices that `sample` can never honour at this image size, in words: it draws the
        nearest valid spec instead, so a space file asking for them would be overruled unsaid."""
        out = []
        if not self.patches_for(img_size):
            out.append(f"no patch of {list(self.patch)} cuts {img_size}-px images into a token grid of at most "
                       f"{self.max_grid} a side (max_grid): every spec gets patch {coarsest_patch(img_size)}")
        patches = self.sampled_patches(img_size)
        too_deep = [n for n in self.stages if not any(
            all(can_downsample(g, d) for g in stage_grids(img_size // p, n, d)[:-1])
            for p in patches for d in self.downsamples)]
        if too_deep:
            out.append(f"stages {too_deep} need a token grid that halves {max(too_deep) - 1} time(s), which no patch "
                       f"of {patches} leaves on {img_size}-px images: such specs get fewer stages")
        never = [h for h in self.heads if not any(w % h == 0 for w in self.widths)]
        if never:
            out.append(f"heads {never} divide none of the widths {list(self.widths)}: no stage gets them"
                       + (", every stage gets 1 head" if len(never) == len(self.heads) else ""))
        fixed = {ATTENTIONS[a].value_ratio for a in self.attentions}
        if None not in fixed and set(self.value_ratios) - fixed:
            out.append(f"value_ratios {sorted(set(self.value_ratios) - fixed)} are never used: the attentions "
                       f"{list(self.attentions)} fix their own ({sorted(fixed)})")
        return out

    @classmethod
    def load(cls, path: str | Path | None, img_size: int | None = None) -> SearchSpace:
        """Defaults overridden by a JSON object of {axis: [choices]} (none: the defaults). With the
        data's `img_size`, choices the sampler cannot honour there are warned of."""
        if path is None:
            return cls()
        try:
            override = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"cannot read search-space file {path}: {e}") from None
        if not isinstance(override, dict):
            raise SpecError(f"{path}: a search-space file holds a JSON object of {{axis: [choices]}}")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(override) - known
        if bad:
            raise SpecError(f"{path}: unknown axis {sorted(bad)}; known axes: {sorted(known)}")
        empty = [k for k, v in override.items() if k != "max_grid" and (not isinstance(v, list) or not v)]
        if empty:
            raise SpecError(f"{path}: axis {empty} must be a non-empty list of choices")
        wrong = choice_problems(override)
        if wrong:
            raise SpecError(f"{path}: {'; '.join(wrong)}")
        offered = {"norms": norm_names(), "attentions": attention_names(), "stems": STEM_NAMES,
                   "downsamples": DOWNSAMPLE_NAMES}
        unknown_ops = set().union(*(set(override.get(axis, ())) - set(names) for axis, names in offered.items()))
        if unknown_ops:
            raise SpecError(f"{path}: unknown operator(s) {sorted(unknown_ops)}{PLUGIN_HINT}")
        space = cls(**{k: (v if k == "max_grid" else tuple(v)) for k, v in override.items()})
        for problem in space.unusable_choices(img_size) if img_size else ():
            warnings.warn(f"{path}: {problem}", stacklevel=2)
        return space


# What a number on an axis must be, beyond its type (default: positive)
AXIS_RULES = {"stages": (lambda c: 1 <= c <= MAX_STAGES, f"1 to {MAX_STAGES}"),
              "patch": (lambda c: c in PATCH_SIZES, f"one of {list(PATCH_SIZES)}"),
              "skip_fractions": (lambda c: 0 <= c <= 1, "in [0, 1]")}
POSITIVE = (lambda c: c > 0, "positive")


def choice_problems(override: dict[str, Any]) -> list[str]:
    """Choices of the wrong JSON type for their axis, or outside what a spec can hold."""
    out = []
    for f in dataclasses.fields(SearchSpace):
        if f.name not in override:
            continue
        scalar = f.name == "max_grid"  # one value, not a list of choices
        choices = [override[f.name]] if scalar else override[f.name]
        kind = "int" if scalar else f.type.removeprefix("tuple[").split(",")[0]
        wrong_type = [c for c in choices if not json_value_fits(c, kind)]
        if wrong_type:
            out.append(f"{f.name}: {json.dumps(wrong_type[0])} is not {JSON_KINDS[kind]}")
            continue
        fits, rule = AXIS_RULES.get(f.name, POSITIVE)
        outside = [c for c in choices if kind in ("int", "float") and not fits(c)]
        if outside:
            out.append(f"{f.name}: {outside[0]} is outside the space (each must be {rule})")
    return out


class Suggester(Protocol):
    def suggest_categorical(self, name: str, choices: list) -> Any: ...


class RngSuggester:
    """The one method of optuna.Trial that `sample` uses, answered by a seeded numpy RNG."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return choices[int(self.rng.integers(len(choices)))]


def sample(trial_or_rng: Suggester | np.random.Generator | int, space: SearchSpace | None = None,
           img_size: int = 32, in_chans: int = 3, num_classes: int = 10) -> ArchSpec:
    """Draw one valid spec from `space` (None: the default space). Parameters are conditional:
    stage i's are named `s{i}.*` and asked only when the spec has that stage; `value_ratio` only
    for attentions that accept more than one (CGA needs 1)."""
    space = space or SearchSpace()
    t = trial_or_rng
    if isinstance(t, (int, np.integer)):
        t = np.random.default_rng(int(t))
    if isinstance(t, np.random.Generator):
        t = RngSuggester(t)
    patch = t.suggest_categorical("patch", space.sampled_patches(img_size))
    n_stages = t.suggest_categorical("stages", list(space.stages))
    stem = t.suggest_categorical("stem", list(space.stems))
    downsample = t.suggest_categorical("downsample", list(space.downsamples))
    while n_stages > 1 and not all(can_downsample(g, downsample)
                                   for g in stage_grids(img_size // patch, n_stages, downsample)[:-1]):
        n_stages -= 1
    norm = t.suggest_categorical("norm", list(space.norms))
    widths = sorted(t.suggest_categorical(f"s{i}.width", list(space.widths)) for i in range(n_stages))
    stages = []
    for i, width in enumerate(widths):
        attention = t.suggest_categorical(f"s{i}.attention", list(space.attentions))
        depth = t.suggest_categorical(f"s{i}.depth", list(space.depths))
        heads = t.suggest_categorical(f"s{i}.heads", list(space.heads))
        heads = max((h for h in space.heads if h <= heads and width % h == 0), default=1)  # must divide width
        key_dim = t.suggest_categorical(f"s{i}.key_dim", list(space.key_dims))
        value_ratio = (ATTENTIONS[attention].value_ratio
                       or t.suggest_categorical(f"s{i}.value_ratio", list(space.value_ratios)))
        ffns = t.suggest_categorical(f"s{i}.ffns", list(space.ffns))
        mlp_ratio = t.suggest_categorical(f"s{i}.mlp_ratio", list(space.mlp_ratios))
        dwconv = t.suggest_categorical(f"s{i}.dwconv", list(space.dwconv))
        skip: tuple[int, ...] = ()
        if depth > 1:
            frac = t.suggest_categorical(f"s{i}.skip_fraction", list(space.skip_fractions))
            k = min(int(frac * depth), depth - 1)
            start = max(1, (depth - k) // 2)
            skip = tuple(range(start, start + k))
        stages.append(StageSpec(width=width, depth=depth, norm=norm, attention=attention, heads=heads,
                                key_dim=key_dim, value_ratio=value_ratio, ffns=ffns, mlp_ratio=mlp_ratio,
                                dwconv=dwconv, skip=skip))
    return ArchSpec(tuple(stages), img_size=img_size, in_chans=in_chans, num_classes=num_classes, patch=patch,
                    stem=stem, downsample=downsample).validate()


def params_of(spec: ArchSpec, space: SearchSpace) -> dict[str, Any]:
    """The trial parameters from which `sample` rebuilds exactly this spec (used to enqueue the
    seed presets as ordinary trials). Raises SpecError if the spec is outside the sampler's form."""
    s0 = spec.stages[0]
    params: dict[str, Any] = {"patch": spec.patch, "stages": len(spec.stages), "stem": spec.stem,
                              "downsample": spec.downsample, "norm": s0.norm}
    for i, s in enumerate(spec.stages):
        params.update({f"s{i}.width": s.width, f"s{i}.attention": s.attention, f"s{i}.depth": s.depth,
                       f"s{i}.heads": s.heads, f"s{i}.key_dim": s.key_dim, f"s{i}.ffns": s.ffns,
                       f"s{i}.mlp_ratio": s.mlp_ratio, f"s{i}.dwconv": s.dwconv})
        if ATTENTIONS[s.attention].value_ratio is None:
            params[f"s{i}.value_ratio"] = s.value_ratio
        if s.depth > 1:
            params[f"s{i}.skip_fraction"] = len(s.skip) / s.depth
    fixed = FixedSuggester(params)
    if sample(fixed, space.including(params), spec.img_size, spec.in_chans, spec.num_classes) != spec:
        raise SpecError(f"{spec.name or spec.short()} cannot be expressed by the sampler's parameters")
    return params


class FixedSuggester:
    """Answers `suggest_categorical` from a dict of parameters (Optuna's FixedTrial, minus checks)."""

    def __init__(self, params: dict[str, Any]):
        self.params = params

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self.params[name]


AXIS_OF = {"patch": "patch", "stages": "stages", "stem": "stems", "downsample": "downsamples", "norm": "norms", "width": "widths", "attention": "attentions",
           "depth": "depths", "heads": "heads", "key_dim": "key_dims", "value_ratio": "value_ratios",
           "ffns": "ffns", "mlp_ratio": "mlp_ratios", "dwconv": "dwconv", "skip_fraction": "skip_fractions"}
