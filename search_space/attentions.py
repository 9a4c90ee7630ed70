"""Token mixers over [B, N, C]: softmax MHSA, SLAB's SLA, EfficientViT's CGA, SkipAt's parametric Phi.

Each attention reads the normalized stream through `absorb_input_affine(a, b)` (so deploy can
fold the norm before it) and writes back through `proj` (so Pre-RMSNorm can re-centre it).
"""
from __future__ import annotations

import contextlib
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fold import affine_into_linear

SLA_KERNEL = 5  # SLA's depthwise conv on V
CGA_KERNEL = 5  # CGA's depthwise conv on each head's queries
CGA_LARGEST_WINDOW = 8
PHI_HIDDEN_RATIO, PHI_KERNEL = 2, 5  # SkipAt's LeFF: hidden width and depthwise kernel
ECA_KERNEL = 3


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """float32, without a cast op where it already is, so that a traced graph holds none."""
    return x if x.dtype == torch.float32 else x.float()


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off where it is on; elsewhere no context, so that a traced graph holds none."""
    enabled = torch.is_autocast_enabled(device_type)
    return torch.autocast(device_type=device_type, enabled=False) if enabled else contextlib.nullcontext()


def to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, N, C] tokens -> [B, C, g, g] map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid, grid)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, g, g] map -> [B, N, C] tokens."""
    return x.flatten(2).transpose(1, 2)


class _QKVAttention(nn.Module):
    """Shared projections of MHSA and SLA: one qkv Linear (h*(2*kd + dv)) and one output proj."""

    def __init__(self, dim: int, heads: int, key_dim: int, value_ratio: int = 1):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.value_dim = value_ratio * dim // heads
        self.qkv = nn.Linear(dim, heads * (2 * key_dim + self.value_dim))
        self.proj = nn.Linear(heads * self.value_dim, dim)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qkv(x) -> q, k: [B, h, N, kd]; v: [B, h, N, dv]."""
        B, N, _ = x.shape
        h, kd = self.heads, self.key_dim
        q, k, v = self.qkv(x).split([h * kd, h * kd, h * self.value_dim], dim=-1)
        return (q.view(B, N, h, -1).transpose(1, 2), k.view(B, N, h, -1).transpose(1, 2),
                v.view(B, N, h, -1).transpose(1, 2))

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        B, h, N, d = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, h * d))

    def absorb_input_affine(self, a: torch.Tensor, b: torch.Tensor) -> None:
        affine_into_linear(self.qkv, a, b)


class MultiHeadSelfAttention(_QKVAttention):
    """Softmax attention with key dim kd per head, through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, key_dim: int, value_ratio: int = 1, grid: int = 0):
        super().__init__(dim, heads, key_dim, value_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v))


class SimplifiedLinearAttention(_QKVAttention):
    """SLAB's SLA: ReLU kernels, k += learnable positional term, Q(K^T V) normalised by Q.sum(K),
    in float32, plus a 5x5 depthwise conv on V shared by all heads (rank restoration)."""

    def __init__(self, dim: int, heads: int, key_dim: int, value_ratio: int = 1, grid: int = 0,
                 kernel_size: int = SLA_KERNEL):
        super().__init__(dim, heads, key_dim, value_ratio)
        self.grid = grid
        self.pos = nn.Parameter(torch.zeros(1, heads, grid * grid, key_dim))
        self.dwc = nn.Conv2d(self.value_dim, self.value_dim, kernel_size,
                             padding=kernel_size // 2, groups=self.value_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        with _without_autocast(x.device.type):
            q, k, v = F.relu(_fp32(q)), F.relu(_fp32(k) + self.pos), _fp32(v)
            z = torch.reciprocal(q @ k.sum(2, keepdim=True).transpose(-1, -2) + 1e-6)   # [B, h, N, 1]
            N, dk, dv = q.shape[2], q.shape[3], v.shape[3]
            if N * N * (dk + dv) < 2 * N * dk * dv:  # (Q K^T) V is cheaper for few tokens
                o = ((q @ k.transpose(-1, -2)) @ v) * z
            else:
                o = (q @ (k.transpose(-1, -2) @ v)) * z
        B, h, N, d = v.shape
        v_map = v.reshape(B * h, N, d).transpose(1, 2).reshape(B * h, d, self.grid, self.grid)
        o = o + to_tokens(self.dwc(v_map)).reshape(B, h, N, d)
        return self.merge_heads(o if o.dtype == x.dtype else o.to(x.dtype))


def window_for(grid: int, largest: int = CGA_LARGEST_WINDOW) -> int:
    """Window side for CGA: the whole grid when small, else its largest divisor <= `largest`,
    so windows tile the grid exactly (no padding, which would break exact norm folding)."""
    return grid if grid <= largest else max(w for w in range(1, largest + 1) if grid % w == 0)


class CascadedGroupAttention(nn.Module):
    """EfficientViT's CGA in local windows: head i sees channel chunk i plus head i-1's output,
    a depthwise conv refines its queries, and a learnable relative-position bias joins the logits.

    Once a norm is folded into it, head i's input projection splits in two (`qkvs[i]` on the raw
    chunk, `cascade[i]` on the previous output), since only the chunk was normalised.
    """

    def __init__(self, dim: int, heads: int, key_dim: int, value_ratio: int = 1, grid: int = 0,
                 kernels: int | tuple[int, ...] = CGA_KERNEL):
        super().__init__()
        assert value_ratio == 1, "cga needs value_ratio 1"
        self.heads, self.key_dim, self.value_dim = heads, key_dim, dim // heads
        self.grid, self.window = grid, window_for(grid)
        self.scale = key_dim ** -0.5
        kernels = (kernels,) * heads if isinstance(kernels, int) else kernels
        self.qkvs = nn.ModuleList(nn.Linear(self.value_dim, 2 * key_dim + self.value_dim) for _ in range(heads))
        self.cascade: nn.ModuleList | None = None
        self.dws = nn.ModuleList(nn.Conv2d(key_dim, key_dim, k, padding=k // 2, groups=key_dim) for k in kernels)
        self.proj = nn.Linear(heads * self.value_dim, dim)
        w = self.window
        points = list(itertools.product(range(w), range(w)))
        offsets: dict[tuple[int, int], int] = {}
        idx = [offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets))
               for p in points for q in points]
        self.attention_biases = nn.Parameter(torch.zeros(heads, len(offsets)))
        self.register_buffer("bias_idx", torch.tensor(idx).view(w * w, w * w), persistent=False)
        self.register_buffer("cached_bias", None, persistent=False)  # a buffer, so .to(device) moves it

    def attention_bias(self) -> torch.Tensor:
        if self.cached_bias is not None:
            return self.cached_bias
        return self.attention_biases[:, self.bias_idx]

    def to_windows(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        g, w = self.grid, self.window
        x = x.view(B, g // w, w, g // w, w, C).transpose(2, 3)
        return x.reshape(-1, w * w, C)

    def from_windows(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        g, w, C = self.grid, self.window, x.shape[-1]
        x = x.view(batch, g // w, g // w, w, w, C).transpose(2, 3)
        return x.reshape(batch, g * g, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        xw = self.to_windows(x)                                 # [B', n, C]
        chunks = xw.chunk(self.heads, dim=-1) if self.heads > 1 else (xw,)  # the ONNX chunk of 1 is no list
        bias = self.attention_bias()
        w, kd = self.window, self.key_dim
        outs, prev = [], None
        for i, chunk in enumerate(chunks):
            if prev is None:
                qkv = self.qkvs[i](chunk)
            elif self.cascade is None:
                qkv = self.qkvs[i](chunk + prev)
            else:
                qkv = self.qkvs[i](chunk) + self.cascade[i - 1](prev)
            q, k, v = qkv.split([kd, kd, self.value_dim], dim=-1)
            q = to_tokens(self.dws[i](to_grid(q, w)))
            attn = (q @ k.transpose(-1, -2)) * self.scale + bias[i]
            prev = attn.softmax(-1) @ v
            outs.append(prev)
        o = F.relu(torch.cat(outs, dim=-1))
        return self.proj(self.from_windows(o, B))

    @torch.no_grad()
    def absorb_input_affine(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.cascade is None:  # keep the unscaled weights for the previous heads' outputs
            self.cascade = nn.ModuleList(nn.Linear(self.value_dim, q.out_features, bias=False)
                                         for q in self.qkvs[1:])
            for c, q in zip(self.cascade, self.qkvs[1:]):
                c.weight.copy_(q.weight)
        for q, ai, bi in zip(self.qkvs, a.chunk(self.heads), b.chunk(self.heads)):
            affine_into_linear(q, ai, bi)

    def fuse(self) -> None:
        """Cache the gathered bias table (EfficientViT's `self.ab`)."""
        self.cached_bias = self.attention_bias().detach().clone()


class SkipAttention(nn.Module):
    """SkipAt's parametric function Phi: LeFF (Linear 2x, GELU, 5x5 depthwise conv, GELU, Linear)
    then an ECA channel gate. It maps an earlier block's attention output to this block's."""

    def __init__(self, dim: int, grid: int, hidden_ratio: int = PHI_HIDDEN_RATIO, kernel_size: int = PHI_KERNEL):
        super().__init__()
        hidden = hidden_ratio * dim
        self.grid = grid
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.eca = nn.Conv1d(1, 1, ECA_KERNEL, padding=ECA_KERNEL // 2, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(z))
        h = F.gelu(to_tokens(self.dw(to_grid(h, self.grid))))
        h = self.fc2(h)
        gate = torch.sigmoid(self.eca(h.mean(1, keepdim=True)))   # [B, 1, C]
        return h * gate

