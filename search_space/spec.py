"""ArchSpec: the immutable, JSON-serialisable description of one architecture in the space."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from .operators import ATTENTIONS, PLUGINS_VARIABLE, attention_names, norm_names

PATCH_SIZES = (1, 2, 4, 8, 16)
MIN_IMG_SIZE = 8  # the smallest image side the presets and the space are built for
MAX_STAGES = 3
STEM_NAMES = ("conv", "patch")  # overlapping 3x3 stride-2 conv stack (EfficientViT) | one patchify conv (ViT)
DOWNSAMPLE_NAMES = ("conv2x2", "efficientvit")  # unpadded 2x2 conv | EfficientViT's subsample block


PLUGIN_HINT = f" (or name the module that registers it in {PLUGINS_VARIABLE})"


class SpecError(ValueError):
    """A spec that cannot be built; the message lists every problem found."""


# The JSON value a field's annotation asks for, as a message names it
JSON_KINDS = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or false"}


def json_value_fits(value: object, kind: str, *, bool_from_int: bool = False) -> bool:
    """Whether a JSON value is of `kind` (a JSON_KINDS key). A bool is no number here, though
    Python's is. `bool_from_int`: 0 and 1 pass as bools too, as in specs sampled from space files
    that listed them; such specs build, and their ids keep the numbers."""
    if kind == "bool":
        return isinstance(value, bool) or (bool_from_int and type(value) is int and value in (0, 1))
    if isinstance(value, bool):
        return False
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, {"int": int, "str": str}[kind])


def json_type_problems(where: str, values: dict, cls: type) -> list[str]:
    """The fields of `values` whose JSON type does not fit the dataclass `cls`'s annotation."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name not in values or f.type not in (*JSON_KINDS, "tuple[int, ...]"):
            continue
        v = values[f.name]
        if f.type == "tuple[int, ...]":
            fits = isinstance(v, (list, tuple)) and all(json_value_fits(i, "int") for i in v)
            wanted = "a list of integers"
        else:
            fits, wanted = json_value_fits(v, f.type, bool_from_int=True), JSON_KINDS[f.type]
        if not fits:
            out.append(f"{where}{f.name} must be {wanted} (got {json.dumps(v)})")
    return out


def floats_as_floats(spec: object) -> None:
    """Store the whole numbers given to float fields as floats (JSON's 4 as 4.0), so that a spec
    written by hand names the same architecture, arch_id included, as the sampled one."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.type == "float" and type(value) is int:
            object.__setattr__(spec, f.name, float(value))


@dataclass(frozen=True)
class StageSpec:
    """One stage: `depth` blocks of one width, each an attention layer sandwiched by `ffns` FFNs.

    Blocks whose index is in `skip` replace their attention by SkipAt's parametric function,
    fed by the attention output of the nearest earlier block of the stage.
    """

    width: int
    depth: int
    norm: str = "layernorm"
    attention: str = "mhsa"
    heads: int = 4
    key_dim: int = 16
    value_ratio: int = 1
    ffns: int = 1
    mlp_ratio: float = 4.0
    dwconv: bool = False
    skip: tuple[int, ...] = ()

    def __post_init__(self):
        floats_as_floats(self)

    def short(self) -> str:
        parts = [self.norm, self.attention, f"h{self.heads}k{self.key_dim}v{self.value_ratio}",
                 f"ffn{self.ffns}x{self.mlp_ratio:g}"]
        if self.dwconv:
            parts.append("dw")
        if self.skip:
            parts.append("skip" + "-".join(map(str, self.skip)))
        return f"{self.width}x{self.depth}[{'·'.join(parts)}]"

    def problems(self, index: int, grid: int) -> list[str]:
        where = f"stage {index}"
        out = []
        if self.width <= 0 or self.depth <= 0:
            out.append(f"{where}: width and depth must be positive (got {self.width}x{self.depth})")
        if self.norm not in norm_names():
            out.append(f"{where}: unknown norm '{self.norm}'; choose one of {', '.join(norm_names())}{PLUGIN_HINT}")
        attention = ATTENTIONS.get(self.attention) if self.attention in attention_names() else None
        if attention is None:
            out.append(f"{where}: unknown attention '{self.attention}'; "
                       f"choose one of {', '.join(attention_names())}{PLUGIN_HINT}")
        if self.heads <= 0 or self.width % max(self.heads, 1):
            out.append(f"{where}: {self.heads} heads do not divide width {self.width}")
        if self.key_dim <= 0 or self.value_ratio <= 0 or self.ffns <= 0 or self.mlp_ratio <= 0:
            out.append(f"{where}: key_dim, value_ratio, ffns and mlp_ratio must be positive")
        if attention is not None:
            out.extend(attention.problems(where, self.value_ratio))
        for i in self.skip:
            if not 0 <= i < self.depth:
                out.append(f"{where}: skip block {i} is outside 0..{self.depth - 1}")
            elif i == 0:
                out.append(f"{where}: SkipAt block 0 has no earlier attention in its stage to reuse")
        if tuple(sorted(set(self.skip))) != tuple(self.skip):
            out.append(f"{where}: skip indices must be sorted and unique (got {list(self.skip)})")
        if (attention is not None and attention.needs_grid or self.skip or self.dwconv) and grid < 1:
            out.append(f"{where}: {self.attention} needs a square token grid, got none")
        return out


def coarsest_patch(img_size: int) -> int:
    """The largest patch size that divides the image (1 always does)."""
    return max(p for p in PATCH_SIZES if img_size % p == 0)


def can_downsample(grid: int, downsample: str) -> bool:
    """The unpadded 2x2 conv needs an even grid (so norm folding stays exact); EfficientViT's
    padded stride-2 3x3 depthwise conv takes any grid of at least 2."""
    return grid >= 2 and (downsample != "conv2x2" or grid % 2 == 0)


def stage_grids(first: int, n_stages: int, downsample: str) -> list[int]:
    """Token grid side of each stage: the 2x2 conv halves it, EfficientViT's block halves it
    rounding up (14, 7, 4 at 224 px)."""
    grids = [first]
    for _ in range(n_stages - 1):
        g = grids[-1]
        grids.append(g // 2 if downsample == "conv2x2" else (g + 1) // 2)
    return grids


@dataclass(frozen=True)
class ArchSpec:
    """A whole model: patch stem, stages joined by downsampling, final norm, linear head."""

    stages: tuple[StageSpec, ...]
    img_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    patch: int = 4
    drop_path: float = 0.0
    stem: str = "conv"
    downsample: str = "conv2x2"
    name: str = field(default="", compare=False)  # a label (preset name); not part of the identity

    def __post_init__(self):
        floats_as_floats(self)
        object.__setattr__(self, "stages", tuple(
            s if isinstance(s, StageSpec) else StageSpec(**{**s, "skip": tuple(s.get("skip", ()))})
            for s in self.stages))

    # --- geometry -------------------------------------------------------------------------
    def grids(self) -> list[int]:
        """Token grid side of each stage (the image is square)."""
        return stage_grids(self.img_size // self.patch if self.patch else 0, len(self.stages), self.downsample)

    # --- identity and serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        """Fields added after ids were first published are left out at their default, so a spec
        written before they existed keeps its arch_id."""
        d = dataclasses.asdict(self)
        d.pop("name")
        for key, default in LATER_FIELDS.items():
            if d[key] == default:
                d.pop(key)
        for s in d["stages"]:
            s["skip"] = list(s["skip"])
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        if not isinstance(d, dict) or not isinstance(d.get("stages"), (list, tuple)):
            raise SpecError("spec must be a JSON object with a 'stages' list")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown spec field(s) {sorted(unknown)}; known: {sorted(known)}")
        stage_fields = {f.name for f in dataclasses.fields(StageSpec)}
        for i, s in enumerate(d["stages"]):
            if not isinstance(s, dict):
                raise SpecError(f"stage {i} must be a JSON object")
            bad = set(s) - stage_fields
            if bad:
                raise SpecError(f"stage {i}: unknown field(s) {sorted(bad)}; known: {sorted(stage_fields)}")
            missing = {"width", "depth"} - set(s)
            if missing:
                raise SpecError(f"stage {i}: missing {sorted(missing)}")
        wrong = json_type_problems("", d, cls) + [p for i, s in enumerate(d["stages"])
                                                  for p in json_type_problems(f"stage {i}: ", s, StageSpec)]
        if wrong:
            raise SpecError("; ".join(wrong))
        return cls(**{**d, "stages": tuple(d["stages"])})

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        return cls.from_dict(d)

    @property
    def arch_id(self) -> str:
        """Stable 12-hex id: a hash of the canonical JSON, so it survives save/load."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def short(self) -> str:
        """Canonical human-readable string, e.g. `p4 64x2[prepbn·sla·h4k16v1·ffn2x4] 128x3[...]`."""
        extras = "".join(f" {key}={getattr(self, key)}" for key, default in LATER_FIELDS.items()
                         if getattr(self, key) != default)
        return f"p{self.patch}{extras} " + " ".join(s.short() for s in self.stages)

    # --- validation -----------------------------------------------------------------------
    def problems(self) -> list[str]:
        out = []
        if not self.stages:
            return [f"spec has no stages; give 1 to {MAX_STAGES}"]
        if len(self.stages) > MAX_STAGES:
            out.append(f"{len(self.stages)} stages; the space allows 1 to {MAX_STAGES}")
        sized = min(self.img_size, self.in_chans, self.num_classes) > 0
        if not sized:
            out.append(f"img_size, in_chans and num_classes must be positive (got {self.img_size}, "
                       f"{self.in_chans}, {self.num_classes})")
        if self.patch not in PATCH_SIZES:
            out.append(f"patch {self.patch} not in {PATCH_SIZES}")
        elif sized and self.img_size % self.patch:
            out.append(f"patch {self.patch} does not divide image size {self.img_size}")
        if self.stem not in STEM_NAMES:
            out.append(f"unknown stem '{self.stem}'; choose one of {', '.join(STEM_NAMES)}")
        if self.downsample not in DOWNSAMPLE_NAMES:
            out.append(f"unknown downsample '{self.downsample}'; choose one of {', '.join(DOWNSAMPLE_NAMES)}")
            return out
        grids = self.grids() if sized else []  # without an image size, only the stages' own checks
        for i, g in enumerate(grids[:-1]):
            if not can_downsample(g, self.downsample):
                out.append(f"stage {i} grid {g}x{g} cannot be downsampled ({self.downsample}) into stage "
                           f"{i + 1}; use fewer stages or a smaller patch")
        for i, s in enumerate(self.stages):
            out.extend(s.problems(i, grids[i] if grids else 1))
        if not 0 <= self.drop_path < 1:
            out.append(f"drop_path {self.drop_path} must be in [0, 1)")
        return out

    def validate(self) -> ArchSpec:
        """Raise SpecError naming every problem; return self when the spec is buildable."""
        problems = self.problems()
        if problems:
            raise SpecError("; ".join(problems))
        return self

    def block_attentions(self) -> list[str]:
        """Effective operator of every block: its stage's attention, or `skip` for SkipAt blocks."""
        return [("skip" if b in s.skip else s.attention) for s in self.stages for b in range(s.depth)]


LATER_FIELDS = {"stem": "conv", "downsample": "conv2x2"}


def load_specs(path) -> list[ArchSpec]:
    """Specs from a JSONL file (one spec object per line), each validated."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file {path} does not exist; write one with `etnas space sample --out {path}`")
    specs = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                specs.append(ArchSpec.from_json(line).validate())
            except SpecError as e:
                raise SpecError(f"{path} line {i}: {e}") from None
    if not specs:  # the caller would go on as if no file had been given
        raise SpecError(f"spec file {path} holds no specs; write some with `etnas space sample --out {path}`")
    return specs
