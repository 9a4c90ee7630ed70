"""deploy(): the inference-only model. Modules fold themselves (`fuse()`); this file only walks,
then converts each stage whose residual stream is read only by LayerNorms to Pre-RMSNorm."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .blocks import PreNorm
from .fold import center_output
from .model import NASViT
from .operators import NORMS
from .spec import ArchSpec


def deploy(model: NASViT) -> NASViT:
    """Return an eval-only copy with BN-family norms folded, attention biases cached and
    LayerNorm stages turned into exact Pre-RMSNorm stages (methods.md sections 0, 3 and 5)."""
    model = copy.deepcopy(model).eval()
    for m in list(model.modules()):
        if hasattr(m, "fuse"):
            m.fuse()
        if isinstance(m, nn.ReLU):  # out of place, so that the exported graph needs no functionalization
            m.inplace = False
    for i in range(len(model.stages)):
        if deployed_norm(model.spec, i) == "rms":
            _to_pre_rmsnorm(model, i)
    model.requires_grad_(False)
    return model


def deployed_norm(spec: ArchSpec, stage: int) -> str | None:
    """The norm left in a stage after deploy: the BN family folds away (None), RMSNorm stays
    ("rms_affine"), and a LayerNorm stage becomes affine-free RMSNorm ("rms") when only its
    LayerNorms read its stream and only Linears or convs write it. It stays "layernorm" where
    SkipAt's Phi reads an attention output, or an EfficientViT downsampling block (residual
    convs, no norm) reads or writes the stream."""
    s = spec.stages[stage]
    kind = NORMS[s.norm].deploys_as
    if kind == "layernorm":
        convertible = not s.skip and (spec.downsample == "conv2x2" or len(spec.stages) == 1)
        return "rms" if convertible else "layernorm"
    return "rms_affine" if kind == "rmsnorm" else None


def _stream_readers(model: NASViT, i: int) -> list[PreNorm]:
    """The norm-then-linear layers reading stage i's stream, the next stage's (or the head's) last."""
    stage = model.stages[i]
    nxt = model.stages[i + 1].downsample if i + 1 < len(model.stages) else model.head
    return [layer for block in stage.blocks for layer in block.residual_layers()] + [nxt]


@torch.no_grad()
def _to_pre_rmsnorm(model: NASViT, i: int) -> None:
    stage = model.stages[i]
    readers = _stream_readers(model, i)
    assert all(type(r.norm) is nn.LayerNorm for r in readers), "deployed_norm allows LayerNorm stages only"
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
