"""deploy(): the inference-only model. Modules fold themselves (`fuse()`); this file only walks,
then converts each stage whose residual stream is read only by LayerNorms to Pre-RMSNorm."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .blocks import PreNorm
from .fold import center_output
from .model import NASViT


def deploy(model: NASViT) -> NASViT:
    """Return an eval-only copy with BN-family norms folded, attention biases cached and
    LayerNorm stages turned into exact Pre-RMSNorm stages (methods.md sections 0, 3 and 5)."""
    model = copy.deepcopy(model).eval()
    for m in list(model.modules()):
        if hasattr(m, "fuse"):
            m.fuse()
    for i in range(len(model.stages)):
        if _stream_readers(model, i) is not None:
            _to_pre_rmsnorm(model, i)
    model.requires_grad_(False)
    return model


def _stream_readers(model: NASViT, i: int) -> list[PreNorm] | None:
    """The norm-then-linear layers reading stage i's stream, or None when the stream has another
    reader (SkipAt's Phi reads an attention output) or a reader whose norm is not LayerNorm."""
    stage = model.stages[i]
    if stage.spec.skip:
        return None
    nxt = model.stages[i + 1].downsample if i + 1 < len(model.stages) else model.head
    readers = [layer for block in stage.blocks for layer in block.residual_layers()] + [nxt]
    return readers if all(type(r.norm) is nn.LayerNorm for r in readers) else None


@torch.no_grad()
def _to_pre_rmsnorm(model: NASViT, i: int) -> None:
    stage = model.stages[i]
    readers = _stream_readers(model, i)
    writers = [r.fn.proj for r in readers[:-1]]
    writers.append(model.stem.proj if i == 0 else stage.downsample.fn.proj)
    for r in readers:  # fold each LayerNorm's affine into its reader, leaving an affine-free norm
        ln = r.norm
        r.fn.absorb_input_affine(ln.weight.detach(), ln.bias.detach())
        r.norm = nn.RMSNorm(ln.normalized_shape, eps=ln.eps, elementwise_affine=False)
    for w in writers:  # a zero-mean stream makes LayerNorm and RMSNorm equal
        center_output(w)
    if i == 0:
        model.pos_embed.sub_(model.pos_embed.mean(-1, keepdim=True))
