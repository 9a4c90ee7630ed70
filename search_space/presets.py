"""The seed papers' hand designs as specs. At paper scale (224 px, 1000 classes, multipliers 1)
each follows its paper's macro-architecture (methods.md); smaller inputs keep the design and
scale its token grid, `width_mult`/`depth_mult` shrink it for small data."""
from __future__ import annotations

from collections.abc import Callable

from .spec import PATCH_SIZES, ArchSpec, StageSpec, can_downsample, stage_grids

PAPER_GRID = 14  # 224 px / patch 16 in DeiT, SkipAt and SLAB-DeiT; EfficientViT's stem too
MIN_PATCH = 4  # a token embeds at least 4x4 pixels, as ViTs on CIFAR-10 and MNIST do: finer tokens of
               # small images (one grey value at 8 px) leave an MHSA preset at chance
SEARCH_SCALE = 0.5  # presets in a search are the paper designs at half width and depth: trainable
                    # as proxies on 2 cores, and inside the sampled space's width/depth range


def patch_for(img_size: int, n_stages: int, downsample: str = "conv2x2") -> int:
    """Smallest power-of-two patch of at least MIN_PATCH giving at most the papers' 14x14 grid,
    among those whose grid every downsampling can take; failing that, the coarsest patch such a
    grid allows."""
    def fits(p: int) -> bool:
        grids = stage_grids(img_size // p, n_stages, downsample)
        return img_size % p == 0 and all(can_downsample(g, downsample) for g in grids[:-1])

    valid = [p for p in PATCH_SIZES if fits(p)]
    small = [p for p in valid if p >= MIN_PATCH and img_size // p <= PAPER_GRID]
    return min(small) if small else max(valid)


def _width(width: int, heads: int, width_mult: float) -> int:
    """`width * width_mult`, rounded to a multiple of 8 channels per head."""
    return max(heads * 8, round(width * width_mult / (heads * 8)) * heads * 8)


def _deit(norm: str, attention: str, skipat: bool = False, width_mult: float = 1.0,
          depth_mult: float = 1.0) -> list[StageSpec]:
    heads = 3
    width = _width(192, heads, width_mult)
    depth = max(2, round(12 * depth_mult))
    skip: tuple[int, ...] = ()
    if skipat:  # SkipAt skips the middle half: blocks 3..8 of 12
        k = depth // 2
        start = max(1, (depth - k) // 2)
        skip = tuple(range(start, min(start + k, depth)))
    return [StageSpec(width=width, depth=depth, norm=norm, attention=attention, heads=heads,
                      key_dim=width // heads, value_ratio=1, ffns=1, mlp_ratio=4.0, dwconv=False, skip=skip)]


def _efficientvit_m0(width_mult: float = 1.0, depth_mult: float = 1.0) -> list[StageSpec]:
    heads = 4
    return [StageSpec(width=_width(w, heads, width_mult), depth=max(1, round(d * depth_mult)),
                      norm="batchnorm", attention="cga", heads=heads, key_dim=16, value_ratio=1, ffns=2,
                      mlp_ratio=2.0, dwconv=True)
            for w, d in zip((64, 128, 192), (1, 2, 3))]


# name -> (stages builder, stem, downsampling between stages)
PRESETS: dict[str, tuple[Callable[..., list[StageSpec]], str, str]] = {
    "deit-tiny": (lambda **m: _deit("layernorm", "mhsa", **m), "patch", "conv2x2"),
    "slab-deit": (lambda **m: _deit("prepbn", "sla", **m), "patch", "conv2x2"),
    "efficientvit-m0": (_efficientvit_m0, "conv", "efficientvit"),
    "skipat-tiny": (lambda **m: _deit("layernorm", "mhsa", skipat=True, **m), "patch", "conv2x2"),
    "pre-rmsnorm": (lambda **m: _deit("rmsnorm", "mhsa", **m), "patch", "conv2x2"),
    "unified-norm": (lambda **m: _deit("unified", "mhsa", **m), "patch", "conv2x2"),
}


def preset(name: str, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
           width_mult: float = 1.0, depth_mult: float = 1.0) -> ArchSpec:
    """One seed design; width_mult/depth_mult shrink it for small data (1.0 = the paper's)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    build, stem, downsample = PRESETS[name]
    stages = tuple(build(width_mult=width_mult, depth_mult=depth_mult))
    return ArchSpec(stages, img_size, in_chans, num_classes, patch_for(img_size, len(stages), downsample),
                    stem=stem, downsample=downsample, name=name).validate()


def presets(img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
            width_mult: float = 1.0, depth_mult: float = 1.0) -> dict[str, ArchSpec]:
    """Every seed design, by name."""
    return {n: preset(n, img_size, in_chans, num_classes, width_mult, depth_mult) for n in PRESETS}
