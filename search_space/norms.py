"""Token norms over [B, N, C]: LayerNorm and RMSNorm references, and the BN family that folds away.

Every BN-family norm exposes `eval_affine() -> (a, b)`, its eval-time map n(x) = a*x + b, which
deploy folds into the adjacent Linear/Conv (methods.md section 0).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .fold import bn_affine


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of [B, N, C] tokens (statistics over batch x tokens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return bn_affine(self)


class RepBN(nn.Module):
    """SLAB's RepBN: BN(x) + alpha * x with one learnable scalar alpha (init 1)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = TokenBatchNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) + self.alpha * x

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.bn.eval_affine()
        return a + self.alpha, b


class PRepBN(nn.Module):
    """SLAB's progressive LayerNorm -> RepBN: lambda*LN(x) + (1-lambda)*RepBN(x) while training.

    lambda falls linearly from 1 to 0. Standalone, it ticks once per training forward over
    `step` calls (the paper's LinearNorm); a trainer that calls `set_progress(step, total)`
    instead makes lambda reach 0 at `fraction` of its run. Eval uses the RepBN branch only.
    """

    def __init__(self, dim: int, step: int = 300_000, warm: int = 0, fraction: float = 0.8,
                 ln_eps: float = 1e-6):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=ln_eps)
        self.rbn = RepBN(dim)
        self.fraction = fraction
        self.register_buffer("warm", torch.tensor(warm))
        self.register_buffer("iter", torch.tensor(step))
        self.register_buffer("total_step", torch.tensor(step))

    @property
    def lam(self) -> float:
        return float(self.iter) / max(float(self.total_step), 1.0)

    def set_progress(self, step: int, total_steps: int) -> None:
        end = max(round(self.fraction * total_steps), 1)
        self.warm.fill_(0)
        self.total_step.fill_(end)
        self.iter.fill_(max(end - step, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.rbn(x)
        if self.warm > 0:
            self.warm -= 1
            return self.ln(x)
        lam = self.lam
        if self.iter > 0:
            self.iter -= 1
        return lam * self.ln(x) + (1 - lam) * self.rbn(x)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rbn.eval_affine()


class _UnifiedNormFn(torch.autograd.Function):
    """UN's forward (given the smoothed statistic) and its smoothed backward (methods.md section 2)."""

    @staticmethod
    def forward(ctx, x, weight, bias, var, r, un):
        z = x / torch.sqrt(var + un.eps)
        ctx.save_for_backward(z, weight, var, r)
        ctx.un = un
        return z * weight + bias

    @staticmethod
    def backward(ctx, dy):
        z, weight, var, r = ctx.saved_tensors
        un = ctx.un
        t, skip = int(un.iters), un.last_skip
        dims = tuple(range(dy.dim() - 1))
        g = dy * weight * r
        gz = (g * z).mean(dims)
        un.buffer_gz[t % un.window_bwd] = un.ema_gz if skip else gz
        if t <= un.window_bwd or t < un.warmup_iters or skip:
            mean_gz = gz
        else:
            mean_gz = un.buffer_gz.mean(0)
        un.ema_gz.mul_(un.momentum).add_((1 - un.momentum) * mean_gz)
        c = mean_gz if skip else un.ema_gz
        dx = (g - c * z) / torch.sqrt(var + un.eps)
        dw = (dy * r * z).sum(dims)
        db = dy.sum(dims)
        return dx, dw, db, None, None, None


class UnifiedNorm(nn.Module):
    """Unified Normalization: scale-only BN with windowed geometric-mean statistics,
    outlier filtration and a smoothed backward. At eval: w * x / sqrt(running_var + eps) + b."""

    def __init__(self, dim: int, window: int | tuple[int, int] = 4, warmup_iters: int = 4000,
                 outlier_filtration: bool = True, eps: float = 1e-5, momentum: float = 0.9,
                 warmup_fraction: float = 0.05):
        super().__init__()
        self.window_fwd, self.window_bwd = (window, window) if isinstance(window, int) else window
        self.warmup_iters, self.min_free_iters = warmup_iters, 1000
        self.warmup_fraction = warmup_fraction
        self.outlier_filtration, self.eps, self.momentum = outlier_filtration, eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("ema_gz", torch.zeros(dim))
        self.register_buffer("iters", torch.tensor(0))
        self.register_buffer("buffer_x2", torch.zeros(self.window_fwd, dim))
        self.register_buffer("buffer_gz", torch.zeros(self.window_bwd, dim))
        self.last_skip = False

    def set_progress(self, step: int, total_steps: int) -> None:
        """Scale the 4000-iteration warm-up (and its 1000-iteration ratio floor) to a short run."""
        self.warmup_iters = max(1, round(self.warmup_fraction * total_steps))
        self.min_free_iters = self.warmup_iters // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * (self.weight / torch.sqrt(self.running_var + self.eps)) + self.bias
        with torch.no_grad():
            self.iters += 1
            t, wf = int(self.iters), self.window_fwd
            m_t = x.detach().pow(2).mean(tuple(range(x.dim() - 1)))
            r_var = self.buffer_x2.sqrt().var()
            self.buffer_x2[t % wf] = m_t
            skip = False
            if t >= self.warmup_iters and self.outlier_filtration:
                am, gm = self.buffer_x2.mean(0), self.buffer_x2.log().mean(0).exp()
                if bool((am - gm > wf * r_var).any()):
                    self.buffer_x2[t % wf] = self.running_var
                    skip = True
            if t <= wf or t < self.warmup_iters or skip:
                var = m_t
            else:
                var = self.buffer_x2.log().mean(0).exp()
            r = torch.sqrt(var + self.eps) / torch.sqrt(self.running_var + self.eps)
            if t <= max(self.min_free_iters, self.warmup_iters) or skip:
                r = torch.ones_like(r)
            else:
                r = r.clamp(1 / 5, 5)
            self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
            self.last_skip = skip
        return _UnifiedNormFn.apply(x, self.weight, self.bias, var, r, self)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight / torch.sqrt(self.running_var + self.eps), self.bias


def layernorm(dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-6)


def rmsnorm(dim: int) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-6)


BN_FAMILY = (TokenBatchNorm, RepBN, PRepBN, UnifiedNorm)
