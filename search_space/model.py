"""The model every spec builds: conv stem, stages of sandwich blocks, final norm, mean-pooled head."""
from __future__ import annotations

import dataclasses
import numbers

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .blocks import STEMS, ClassifierHead, EfficientViTDownsample, PatchMerging, PreNorm, Stage
from .operators import NORMS
from .spec import ArchSpec, SpecError, StageSpec


def class_count(value: object) -> int:
    """`value` as a number of classes: a positive integer (numpy's too, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpecError(f"num_classes must be a positive integer, got {value!r}")
    return int(value)


class NASViT(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.pretrained_cfg = {"num_classes": spec.num_classes}  # preprocessing, once loaded from an export
        self.label_names = [str(c) for c in range(spec.num_classes)]
        first, last = spec.stages[0], spec.stages[-1]
        grids = spec.grids()
        self.stem = STEMS[spec.stem](spec.in_chans, first.width, spec.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grids[0] ** 2, first.width))
        depth = sum(s.depth for s in spec.stages)
        rates = torch.linspace(0, spec.drop_path, depth).tolist()
        stages, prev, prev_grid = [], None, 0
        for s, g in zip(spec.stages, grids):
            down = None
            if prev is not None:
                down = _downsample(spec.downsample, prev, s.width, prev_grid)
            stages.append(Stage(s, g, down, rates[:s.depth]))
            rates, prev, prev_grid = rates[s.depth:], s, g
        self.stages = nn.ModuleList(stages)
        self.head = PreNorm(NORMS[last.norm].build(last.width), ClassifierHead(last.width, spec.num_classes))
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_linear)

    def no_weight_decay(self) -> set[str]:
        """Parameters that are positions or biases tables, not weights (timm's convention)."""
        return {n for n, _ in self.named_parameters() if n == "pos_embed" or n.endswith((".pos", "attention_biases"))}

    def get_classifier(self) -> nn.Linear:
        return self.head.fn.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised classifier for `num_classes` (timm's convention, for fine-tuning);
        the class names become the class indices, and `pretrained_cfg` counts the new classes."""
        num_classes = class_count(num_classes)
        self.spec = dataclasses.replace(self.spec, num_classes=num_classes)
        self.head.fn.fc = nn.Linear(self.head.fn.fc.in_features, num_classes)
        _init_linear(self.head.fn.fc)
        self.label_names = [str(c) for c in range(num_classes)]
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x) + self.pos_embed
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _downsample(kind: str, prev: StageSpec, out_dim: int, grid: int) -> nn.Module:
    """Downsampling from stage `prev` (grid side `grid`) to `out_dim` channels."""
    if kind == "efficientvit":
        return EfficientViTDownsample(prev.width, out_dim, grid)
    return PreNorm(NORMS[prev.norm].build(prev.width), PatchMerging(prev.width, out_dim, grid))


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_model(spec: ArchSpec) -> NASViT:
    """Build the trainable model of a spec (raises SpecError if the spec is not buildable)."""
    return NASViT(spec)
