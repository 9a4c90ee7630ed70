"""The seed papers' hand designs as specs, with their token grid scaled to the input size."""
from __future__ import annotations

from collections.abc import Callable

from .spec import PATCH_SIZES, ArchSpec, StageSpec

PAPER_GRID = 14  # 224 px / patch 16 in DeiT, SkipAt and SLAB-DeiT; EfficientViT's stem too
SEARCH_SCALE = 0.5  # presets in a search are the paper designs at half width and depth: trainable
                    # as proxies on 2 cores, and inside the sampled space's width/depth range


def patch_for(img_size: int, n_stages: int) -> int:
    """Smallest power-of-two patch giving at most the papers' 14x14 grid and a grid that halves
    cleanly through every downsampling; failing that, the coarsest patch that halves cleanly."""
    valid = [p for p in PATCH_SIZES if img_size % p == 0 and (img_size // p) % 2 ** (n_stages - 1) == 0]
    small = [p for p in valid if img_size // p <= PAPER_GRID]
    return min(small) if small else max(valid)


def _deit(norm: str, attention: str, skipat: bool = False, width_mult: float = 1.0,
          depth_mult: float = 1.0) -> list[StageSpec]:
    heads = 3
    width = max(heads * 8, round(192 * width_mult / (heads * 8)) * heads * 8)
    depth = max(2, round(12 * depth_mult))
    skip: tuple[int, ...] = ()
    if skipat:  # SkipAt skips the middle half: blocks 3..8 of 12
        k = depth // 2
        start = max(1, (depth - k) // 2)
        skip = tuple(range(start, min(start + k, depth)))
    return [StageSpec(width, depth, norm, attention, heads, width // heads, 1, 1, 4.0, False, skip)]


def _efficientvit_m0(width_mult: float = 1.0, depth_mult: float = 1.0) -> list[StageSpec]:
    heads = 4
    widths = [max(heads * 8, round(w * width_mult / (heads * 8)) * heads * 8) for w in (64, 128, 192)]
    depths = [max(1, round(d * depth_mult)) for d in (1, 2, 3)]
    return [StageSpec(w, d, "batchnorm", "cga", heads, 16, 1, 2, 2.0, True) for w, d in zip(widths, depths)]


PRESETS: dict[str, Callable[..., list[StageSpec]]] = {
    "deit-tiny": lambda **m: _deit("layernorm", "mhsa", **m),
    "slab-deit": lambda **m: _deit("prepbn", "sla", **m),
    "efficientvit-m0": _efficientvit_m0,
    "skipat-tiny": lambda **m: _deit("layernorm", "mhsa", skipat=True, **m),
    "pre-rmsnorm": lambda **m: _deit("rmsnorm", "mhsa", **m),
    "unified-norm": lambda **m: _deit("unified", "mhsa", **m),
}


def preset(name: str, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
           width_mult: float = 1.0, depth_mult: float = 1.0) -> ArchSpec:
    """One seed design; width_mult/depth_mult shrink it for small data (1.0 = the paper's)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    stages = tuple(PRESETS[name](width_mult=width_mult, depth_mult=depth_mult))
    return ArchSpec(stages, img_size, in_chans, num_classes, patch_for(img_size, len(stages)),
                    name=name).validate()


def presets(img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
            width_mult: float = 1.0, depth_mult: float = 1.0) -> dict[str, ArchSpec]:
    """Every seed design, by name."""
    return {n: preset(n, img_size, in_chans, num_classes, width_mult, depth_mult) for n in PRESETS}
