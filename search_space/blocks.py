"""Blocks: pre-norm residual layers, the EfficientViT sandwich (FFNs around one attention), stages,
the conv stem and the 2x2 downsampling between stages. Each layer folds its own norm in `fuse()`."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, SEModule

from .attentions import SkipAttention, to_grid, to_tokens
from .fold import affine_after_conv, affine_into_conv, affine_into_linear, bn_affine
from .operators import ATTENTIONS, NORMS
from .spec import StageSpec

FFN_DW_KERNEL = 3  # the depthwise conv in an FFN's hidden layer
STEM_KERNEL = 3
DOWNSAMPLE_EXPANSION = 4  # EfficientViT's PatchMerging: hidden width, and SE reduction
DOWNSAMPLE_DW_KERNEL = 3
CONV_FFN_RATIO = 2
DW_RESIDUAL_KERNEL = 3


class FFN(Mlp):
    """timm's Mlp (fc1, GELU, fc2), optionally with a 3x3 depthwise conv mixing tokens in its
    hidden layer (EfficientViT's DW token interaction, moved inside the branch so that the
    residual stream is only read through the norm)."""

    def __init__(self, dim: int, mlp_ratio: float, grid: int = 0, dwconv: bool = False):
        super().__init__(dim, int(dim * mlp_ratio))
        hidden = self.fc1.out_features
        self.grid = grid
        self.dw = (nn.Conv2d(hidden, hidden, FFN_DW_KERNEL, padding=FFN_DW_KERNEL // 2, groups=hidden)
                   if dwconv else None)

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
    """fn(norm(x)); `fuse()` folds a norm with an inference affine (the BN family's
    `eval_affine()`) into fn's input projection."""

    def __init__(self, norm: nn.Module, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = norm, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))

    def fuse(self) -> None:
        if hasattr(self.norm, "eval_affine"):
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
        norm = NORMS[stage.norm].build
        ffn_layers = [PreNormResidual(norm(dim), FFN(dim, stage.mlp_ratio, grid, stage.dwconv), drop_path)
                      for _ in range(stage.ffns)]
        self.before = nn.ModuleList(ffn_layers[: stage.ffns // 2])
        self.after = nn.ModuleList(ffn_layers[stage.ffns // 2:])
        self.skip = skip
        if skip:
            self.phi = SkipAttention(dim, grid)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            attn = ATTENTIONS[stage.attention].build(dim, stage.heads, stage.key_dim, stage.value_ratio, grid)
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
    """Conv2d (no bias) then BatchNorm2d (EfficientViT's Conv2d_BN); `fuse()` folds the BN into the conv.
    `bn_weight_init=0` starts a residual branch at the identity, as EfficientViT does."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))
        nn.init.constant_(self[1].weight, bn_weight_init)

    def fuse(self) -> None:
        if isinstance(self[1], nn.BatchNorm2d):
            affine_after_conv(self[0], *(t.detach() for t in bn_affine(self[1])))
            self[1] = nn.Identity()


def conv_stem_widths(in_chans: int, dim: int, patch: int) -> list[int]:
    """Channels along the conv stem: log2(patch) stride-2 3x3 convs (one stride-1 conv for patch 1),
    widths halving back from `dim` (EfficientViT: 3 -> C/8 -> C/4 -> C/2 -> C)."""
    n = max(patch.bit_length() - 1, 1)
    return [in_chans] + [max(dim // 2 ** (n - 1 - i), 8) for i in range(n - 1)] + [dim]


class Stem(nn.Module):
    """Image -> token stream [B, N, C]; `proj` is the conv that writes the first stage's stream."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.Sequential(*layers)

    @property
    def proj(self) -> nn.Conv2d:
        last = self.layers[-1]
        return last[0] if isinstance(last, ConvNorm) else last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a transposed stream reaches every Linear once BN folds away, and at batch > 1
        # a Linear on a transposed input runs as a bmm with its weight copied per sample (x1.7 slower)
        return to_tokens(self.layers(x)).contiguous()


class ConvStem(Stem):
    """Overlapping 3x3 conv patch stem (`conv_stem_widths`), GELU between the convs."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        widths = conv_stem_widths(in_chans, dim, patch)
        stride = 2 if patch > 1 else 1
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(ConvNorm(widths[i], widths[i + 1], STEM_KERNEL, stride, STEM_KERNEL // 2))
            if i < len(widths) - 2:
                layers.append(nn.GELU())
        super().__init__(layers)


class PatchStem(Stem):
    """ViT's patch embedding: one non-overlapping patch x patch conv with a bias."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__([nn.Conv2d(in_chans, dim, patch, stride=patch)])


STEMS = {"conv": ConvStem, "patch": PatchStem}


class ConvResidual(nn.Module):
    """x + fn(x) on a [B, C, H, W] map."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


def conv_ffn(dim: int, ratio: int = CONV_FFN_RATIO) -> nn.Sequential:
    """EfficientViT's FFN on maps: 1x1 Conv_BN up, ReLU, 1x1 Conv_BN down (starting at zero)."""
    return nn.Sequential(ConvNorm(dim, ratio * dim), nn.ReLU(), ConvNorm(ratio * dim, dim, bn_weight_init=0.0))


def dw_conv_residual(dim: int) -> ConvResidual:
    k = DW_RESIDUAL_KERNEL
    return ConvResidual(ConvNorm(dim, dim, k, 1, k // 2, groups=dim, bn_weight_init=0.0))


class EfficientViTDownsample(nn.Module):
    """EfficientViT's subsample block (methods.md, macro architecture): residual DW conv and FFN at
    the old width, PatchMerging (1x1 to 4C, ReLU, 3x3 stride-2 DW, ReLU, SE 0.25, 1x1 to C'),
    then residual DW conv and FFN at the new width. Its norms are BNs after each conv, which
    fold into them exactly, so it reads and writes the stream without a pre-norm."""

    def __init__(self, dim: int, out_dim: int, grid: int, expand: int = DOWNSAMPLE_EXPANSION):
        super().__init__()
        hidden = expand * dim
        self.grid = grid
        self.before = nn.Sequential(dw_conv_residual(dim), ConvResidual(conv_ffn(dim)))
        self.merge = nn.Sequential(ConvNorm(dim, hidden), nn.ReLU(),
                                   ConvNorm(hidden, hidden, DOWNSAMPLE_DW_KERNEL, 2, DOWNSAMPLE_DW_KERNEL // 2,
                                            groups=hidden), nn.ReLU(),
                                   SEModule(hidden, rd_channels=hidden // expand), ConvNorm(hidden, out_dim))
        self.after = nn.Sequential(dw_conv_residual(out_dim), ConvResidual(conv_ffn(out_dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.after(self.merge(self.before(to_grid(x, self.grid))))
        return to_tokens(x).contiguous()


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

    def __init__(self, spec: StageSpec, grid: int, downsample: nn.Module | None,
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
