"""Blocks: pre-norm residual layers, the EfficientViT sandwich (FFNs around one attention), stages,
the conv stem and the 2x2 downsampling between stages. Each layer folds its own norm in `fuse()`."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp

from .attentions import ATTENTIONS, SkipAttention, to_grid, to_tokens
from .fold import affine_after_conv, affine_into_conv, affine_into_linear, bn_affine
from .norms import BN_FAMILY, NORMS
from .spec import StageSpec


class FFN(Mlp):
    """timm's Mlp (fc1, GELU, fc2), optionally with a 3x3 depthwise conv mixing tokens in its
    hidden layer (EfficientViT's DW token interaction, moved inside the branch so that the
    residual stream is only read through the norm)."""

    def __init__(self, dim: int, mlp_ratio: float, grid: int = 0, dwconv: bool = False):
        super().__init__(dim, int(dim * mlp_ratio))
        hidden = self.fc1.out_features
        self.grid = grid
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        if self.dw is not None:
            x = x + to_tokens(self.dw(to_grid(x, self.grid)))
        return self.fc2(x)

    @property
    def proj(self) -> nn.Linear:
        return self.fc2

    def absorb_input_affine(self, a: torch.Tensor, b: torch.Tensor) -> None:
        affine_into_linear(self.fc1, a, b)


class PreNorm(nn.Module):
    """fn(norm(x)); `fuse()` folds a BN-family norm into fn's input projection."""

    def __init__(self, norm: nn.Module, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = norm, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))

    def fuse(self) -> None:
        if isinstance(self.norm, BN_FAMILY):
            self.fn.absorb_input_affine(*(t.detach() for t in self.norm.eval_affine()))
            self.norm = nn.Identity()


class PreNormResidual(PreNorm):
    """x + drop_path(fn(norm(x))): one attention or FFN layer of a pre-norm block."""

    def __init__(self, norm: nn.Module, fn: nn.Module, drop_path: float = 0.0):
        super().__init__(norm, fn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fn(self.norm(x)))


class SandwichBlock(nn.Module):
    """ffns//2 FFN layers, one attention layer (or SkipAt's Phi), then the remaining FFN layers.

    ffns=1 is a plain ViT block; ffns=2 is EfficientViT's FFN-attention-FFN sandwich. The block
    returns its attention output too, which a later SkipAt block of the stage reuses.
    """

    def __init__(self, dim: int, grid: int, stage: StageSpec, skip: bool, drop_path: float = 0.0):
        super().__init__()
        norm = NORMS[stage.norm]
        ffn_layers = [PreNormResidual(norm(dim), FFN(dim, stage.mlp_ratio, grid, stage.dwconv), drop_path)
                      for _ in range(stage.ffns)]
        self.before = nn.ModuleList(ffn_layers[: stage.ffns // 2])
        self.after = nn.ModuleList(ffn_layers[stage.ffns // 2:])
        self.skip = skip
        if skip:
            self.phi = SkipAttention(dim, grid)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            attn = ATTENTIONS[stage.attention](dim, stage.heads, stage.key_dim, stage.value_ratio, grid)
            self.attn = PreNormResidual(norm(dim), attn, drop_path)

    def forward(self, x: torch.Tensor, prev_attn: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.before:
            x = layer(x)
        if self.skip:
            out = self.phi(prev_attn)
            x = x + self.drop_path(out)
        else:
            out = PreNorm.forward(self.attn, x)
            x = x + self.attn.drop_path(out)
        for layer in self.after:
            x = layer(x)
        return x, out

    def residual_layers(self) -> list[PreNormResidual]:
        """Every pre-norm layer reading the stream, in order."""
        return [*self.before, *([] if self.skip else [self.attn]), *self.after]


class ConvNorm(nn.Sequential):
    """Conv2d (no bias) then BatchNorm2d; `fuse()` folds the BN into the conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout))

    def fuse(self) -> None:
        if isinstance(self[1], nn.BatchNorm2d):
            affine_after_conv(self[0], *(t.detach() for t in bn_affine(self[1])))
            self[1] = nn.Identity()


class ConvStem(nn.Module):
    """Overlapping 3x3 conv patch stem: log2(patch) stride-2 ConvNorms (one stride-1 for patch 1),
    GELU between them; the last one writes the first stage's stream."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        n = max(patch.bit_length() - 1, 1)
        stride = 2 if patch > 1 else 1
        widths = [in_chans] + [max(dim // 2 ** (n - 1 - i), 8) for i in range(n - 1)] + [dim]
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(ConvNorm(widths[i], widths[i + 1], 3, stride, 1))
            if i < n - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)

    @property
    def proj(self) -> nn.Conv2d:
        return self.layers[-1][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a transposed stream reaches every Linear once BN folds away, and at batch > 1
        # a Linear on a transposed input runs as a bmm with its weight copied per sample (x1.7 slower)
        return to_tokens(self.layers(x)).contiguous()


class PatchMerging(nn.Module):
    """Unpadded 2x2 stride-2 conv to the next width: Swin's patch merging as a conv, read
    through the norm of the stage it leaves (`PreNorm`), into which that norm folds exactly."""

    def __init__(self, dim: int, out_dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv2d(dim, out_dim, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_tokens(self.proj(to_grid(x, self.grid)))

    def absorb_input_affine(self, a: torch.Tensor, b: torch.Tensor) -> None:
        affine_into_conv(self.proj, a, b)


class ClassifierHead(nn.Module):
    """Mean over tokens, then a Linear. A per-channel affine before it commutes with the mean."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(1))

    def absorb_input_affine(self, a: torch.Tensor, b: torch.Tensor) -> None:
        affine_into_linear(self.fc, a, b)


class Stage(nn.Module):
    """Optional downsampling from the previous stage, then `depth` sandwich blocks."""

    def __init__(self, spec: StageSpec, grid: int, downsample: PreNorm | None,
                 drop_paths: list[float]):
        super().__init__()
        self.spec = spec
        self.downsample = downsample
        self.blocks = nn.ModuleList(SandwichBlock(spec.width, grid, spec, b in spec.skip, dp)
                                    for b, dp in zip(range(spec.depth), drop_paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        attn_out = None
        for block in self.blocks:
            x, attn_out = block(x, attn_out)
        return x
