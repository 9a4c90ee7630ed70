"""Folding algebra (methods.md section 0): per-channel affines into Linear/Conv, re-centring writers."""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def affine_into_linear(linear: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> None:
    """Make linear(x) compute the old linear(a*x + b): W' = W diag(a), c' = W b + c."""
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    new_bias = bias + linear.weight @ b
    linear.weight.mul_(a)
    linear.bias = nn.Parameter(new_bias)


@torch.no_grad()
def affine_into_conv(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> None:
    """Same for an unpadded (or 1x1) Conv2d: every tap of input channel j scales by a_j."""
    assert conv.padding in ((0, 0), 0, "valid") and conv.groups == 1, "exact only for unpadded dense convs"
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    new_bias = bias + torch.einsum("oihw,i->o", conv.weight, b)
    conv.weight.mul_(a.view(1, -1, 1, 1))
    conv.bias = nn.Parameter(new_bias)


@torch.no_grad()
def affine_after_conv(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> None:
    """Make conv(x) compute a*conv(x) + b (a BatchNorm2d after it): scale output rows."""
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    conv.weight.mul_(a.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(a * bias + b)


@torch.no_grad()
def center_output(layer: nn.Linear | nn.Conv2d) -> None:
    """Re-centre a residual writer so its output has zero mean over channels (Pre-RMSNorm, section 5)."""
    layer.weight.sub_(layer.weight.mean(0, keepdim=True))
    if layer.bias is not None:
        layer.bias.sub_(layer.bias.mean())


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-time BatchNorm as a*x + b."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - a * bn.running_mean
