import math

import pytest
import torch

from search_space.norms import PRepBN, RepBN, TokenBatchNorm, UnifiedNorm
from search_space.operators import NORMS


@pytest.mark.parametrize("name", list(NORMS))
def test_norm_shapes_and_gradients(name):
    norm = NORMS[name].build(16).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    y = norm(x)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_token_batchnorm_normalises_over_batch_and_tokens():
    x = torch.randn(4, 25, 8) * 3 + 2
    y = TokenBatchNorm(8).train()(x)
    flat = y.reshape(-1, 8)
    assert torch.allclose(flat.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(flat.var(0, unbiased=False), torch.ones(8), atol=1e-3)


def test_repbn_is_bn_plus_alpha_x():
    rbn = RepBN(8).train()
    with torch.no_grad():
        rbn.alpha.fill_(0.7)
    x = torch.randn(3, 5, 8)
    assert torch.allclose(rbn(x), rbn.bn(x) + 0.7 * x, atol=1e-6)


def test_prepbn_schedule_reaches_zero_at_fraction_and_eval_uses_repbn():
    n = PRepBN(8, fraction=0.8).train()
    n.set_progress(0, 100)
    assert n.lam == 1.0
    n.set_progress(40, 100)
    assert n.lam == pytest.approx(0.5)
    n.set_progress(80, 100)
    assert n.lam == 0.0
    n.set_progress(95, 100)
    assert n.lam == 0.0
    x = torch.randn(2, 4, 8)
    n.set_progress(0, 100)
    assert torch.allclose(n(x), n.ln(x), atol=1e-6)  # lambda 1: pure LayerNorm
    n.eval()
    assert torch.allclose(n(x), n.rbn(x), atol=1e-6)


def test_prepbn_standalone_ticks_per_forward_like_linearnorm():
    n = PRepBN(4, step=4, warm=2).train()
    x = torch.randn(2, 3, 4)
    for _ in range(2):  # warm-up: LayerNorm only, counters untouched
        n(x)
    assert int(n.iter) == 4 and int(n.warm) == 0
    lams = []
    for _ in range(6):
        lams.append(n.lam)
        n(x)
    assert lams == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def _un_reference(xs, dys, window, warmup, filtration, eps=1e-5, m=0.9, w=None):
    """A literal re-statement of methods.md section 2 for a sequence of training steps."""
    C = xs[0].shape[-1]
    w = torch.ones(C) if w is None else w
    running_var, ema_gz = torch.ones(C), torch.zeros(C)
    buf_x, buf_g = torch.zeros(window, C), torch.zeros(window, C)
    outs, grads = [], []
    for t, (x, dy) in enumerate(zip(xs, dys), start=1):
        m_t = (x ** 2).mean((0, 1))
        r_var = buf_x.sqrt().var()
        buf_x[t % window] = m_t
        skip = False
        if t >= warmup and filtration:
            am, gm = buf_x.mean(0), buf_x.log().mean(0).exp()
            if (am - gm > window * r_var).any():
                buf_x[t % window] = running_var
                skip = True
        var = m_t if (t <= window or t < warmup or skip) else buf_x.log().mean(0).exp()
        r = torch.sqrt(var + eps) / torch.sqrt(running_var + eps)
        r = torch.ones(C) if (t <= max(0, warmup) or skip) else r.clamp(0.2, 5)
        z = x / torch.sqrt(var + eps)
        outs.append(w * z)
        running_var = m * running_var + (1 - m) * var
        g = dy * w * r
        gz = (g * z).mean((0, 1))
        buf_g[t % window] = ema_gz if skip else gz
        mean_gz = gz if (t <= window or t < warmup or skip) else buf_g.mean(0)
        ema_gz = m * ema_gz + (1 - m) * mean_gz
        c = mean_gz if skip else ema_gz
        grads.append((g - c * z) / torch.sqrt(var + eps))
    return outs, grads, running_var


@pytest.mark.parametrize("filtration", [False, True])
def test_unified_norm_forward_and_smoothed_backward_match_the_formulas(filtration):
    torch.manual_seed(3)
    steps, C = 9, 6
    xs = [torch.randn(2, 5, C) * (1 + 0.3 * i) for i in range(steps)]
    xs[7] = xs[7] * 40  # an outlier batch for the filtration to catch
    dys = [torch.randn(2, 5, C) for _ in range(steps)]
    un = UnifiedNorm(C, window=4, warmup_iters=2, outlier_filtration=filtration).train()
    un.min_free_iters = 0  # let the compensation ratio act from the warm-up on
    outs, grads, running_var = _un_reference(xs, dys, 4, 2, filtration)
    skipped = []
    for x, dy, out, grad in zip(xs, dys, outs, grads):
        x = x.clone().requires_grad_(True)
        y = un(x)
        y.backward(dy)
        skipped.append(un.last_skip)
        assert torch.allclose(y, out, rtol=1e-4, atol=1e-5)
        assert torch.allclose(x.grad, grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(un.running_var, running_var, rtol=1e-5)
    assert any(skipped) == filtration  # the outlier batch was filtered only when asked


def test_unified_norm_eval_is_scale_only_affine():
    un = UnifiedNorm(4).eval()
    with torch.no_grad():
        un.running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
        un.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        un.bias.fill_(0.25)
    x = torch.randn(2, 3, 4)
    expected = x * un.weight / torch.sqrt(un.running_var + 1e-5) + 0.25
    assert torch.allclose(un(x), expected, atol=1e-6)
    a, b = un.eval_affine()
    assert torch.allclose(x * a + b, expected, atol=1e-6)


def test_unified_norm_set_progress_scales_warmup():
    un = UnifiedNorm(4)
    un.set_progress(0, 400)
    assert un.warmup_iters == 20 and un.min_free_iters == 5
    assert math.isclose(un.warmup_fraction, 0.05)
