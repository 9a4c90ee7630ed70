import pytest
import torch
import torch.nn.functional as F

from search_space.attentions import (CascadedGroupAttention, MultiHeadSelfAttention, SimplifiedLinearAttention,
                                     SkipAttention, window_for)
from search_space.costs import flop_analysis
from search_space.operators import ATTENTIONS


@pytest.mark.parametrize("name", list(ATTENTIONS))
@pytest.mark.parametrize("grid", [4, 16])
def test_attention_shapes_and_gradients(name, grid):
    attn = ATTENTIONS[name].build(32, 4, 8, 1, grid)
    x = torch.randn(2, grid * grid, 32, requires_grad=True)
    y = attn(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in attn.parameters())


def test_mhsa_matches_explicit_softmax():
    attn = MultiHeadSelfAttention(24, 3, 8, 2)
    x = torch.randn(2, 10, 24)
    q, k, v = attn.split_heads(x)
    o = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
    assert torch.allclose(attn(x), attn.merge_heads(o), atol=1e-5)


@pytest.mark.parametrize("grid", [2, 3])  # 2: (Q K^T) V is cheaper; 3: Q (K^T V)
def test_sla_matches_the_formula_in_both_orders(grid):
    attn = SimplifiedLinearAttention(16, 2, 8, 1, grid=grid)
    with torch.no_grad():
        attn.pos.normal_()
    x = torch.randn(2, grid * grid, 16)
    q, k, v = attn.split_heads(x)
    q, k = F.relu(q), F.relu(k + attn.pos)
    num = torch.einsum("bhnd,bhme,bhmd->bhne", q, v, k)           # sum_j (q_i . k_j) v_j
    den = torch.einsum("bhnd,bhmd->bhn", q, k)[..., None] + 1e-6  # q_i . sum_j k_j
    B, h, N, d = v.shape
    dwc = attn.dwc(v.reshape(B * h, N, d).transpose(1, 2).reshape(B * h, d, grid, grid))
    o = num / den + dwc.flatten(2).transpose(1, 2).reshape(B, h, N, d)
    assert torch.allclose(attn(x), attn.merge_heads(o), atol=1e-5)


def test_cga_cascade_feeds_previous_head_output():
    """Perturbing only head 0's input chunk changes head 1's output (through the cascade), and
    perturbing head 1's chunk leaves head 0 alone (the cascade runs one way)."""
    attn = CascadedGroupAttention(16, 2, 4, 1, grid=2).eval()
    heads_out = []
    attn.proj.register_forward_pre_hook(lambda m, args: heads_out.append(args[0].split(8, dim=-1)))
    x = torch.randn(1, 4, 16)
    bump0, bump1 = torch.zeros_like(x), torch.zeros_like(x)
    bump0[..., :8], bump1[..., 8:] = 1.0, 1.0
    with torch.no_grad():
        for inp in (x, x + bump0, x + bump1):
            attn(inp)
    (base0, base1), (_, moved1), (still0, _) = heads_out
    assert not torch.allclose(base1, moved1, atol=1e-4)
    assert torch.equal(base0, still0)


def test_cga_windows_tile_the_grid_exactly():
    assert window_for(7) == 7 and window_for(8) == 8 and window_for(16) == 8 and window_for(14) == 7
    attn = CascadedGroupAttention(16, 2, 4, 1, grid=16)
    x = torch.randn(2, 256, 16)
    assert torch.equal(attn.from_windows(attn.to_windows(x), 2), x)
    # each window is a square 8x8 block of the 16x16 grid, its tokens row-major: token (r, c) carries r, c
    r, c = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    coords = torch.stack([r.flatten(), c.flatten()], -1)[None].expand(2, -1, -1).float()
    windows = attn.to_windows(coords)
    assert windows.shape == (2 * 4, 64, 2)
    wr, wc = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    for b in range(2):
        for k, (br, bc) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            expected = torch.stack([(8 * br + wr).flatten(), (8 * bc + wc).flatten()], -1).float()
            assert torch.equal(windows[4 * b + k], expected)


def test_skip_phi_gates_channels_with_eca():
    phi = SkipAttention(8, grid=4)
    z = torch.randn(2, 16, 8)
    h = phi.fc2(F.gelu(phi.dw(F.gelu(phi.fc1(z)).transpose(1, 2).reshape(2, 16, 4, 4))).flatten(2).transpose(1, 2))
    gate = torch.sigmoid(phi.eca(h.mean(1, keepdim=True)))
    assert torch.allclose(phi(z), h * gate, atol=1e-6)


def _flops(module, x):
    return flop_analysis(module.eval(), x).total()


def test_flops_mhsa_closed_form():
    C, h, kd, vr, N = 32, 4, 8, 2, 16
    dv = vr * C // h
    attn = MultiHeadSelfAttention(C, h, kd, vr)
    expected = N * C * h * (2 * kd + dv) + h * N * N * (kd + dv + 1) + N * h * dv * C
    assert _flops(attn, torch.randn(1, N, C)) == expected


def test_flops_sla_closed_form():
    C, h, kd, g = 32, 2, 8, 4
    N, dv = g * g, C // h
    attn = SimplifiedLinearAttention(C, h, kd, 1, g)
    linear = N * C * h * (2 * kd + dv) + N * h * dv * C  # qkv, proj
    kernels = 3 * h * N * kd  # k + pos, sum_j k_j, q . sum_j k_j
    norm = 2 * h * N  # + 1e-6, reciprocal
    product = h * min(N * N * (kd + dv), 2 * N * kd * dv) + h * N * dv  # cheaper order, then * z
    dwc = h * N * dv * 25 + h * N * dv  # 5x5 depthwise conv on V, + o
    assert 2 * N * kd * dv < N * N * (kd + dv)  # this case takes the Q (K^T V) order
    assert _flops(attn, torch.randn(1, N, C)) == linear + kernels + norm + product + dwc


def test_flops_cga_closed_form():
    C, h, kd, g = 32, 4, 8, 4
    N, d = g * g, C // h
    attn = CascadedGroupAttention(C, h, kd, 1, g)
    per_head = N * d * (2 * kd + d) + N * kd * 25 + N * N * kd + 3 * N * N + N * N * d
    cascade_adds = (h - 1) * N * d
    assert _flops(attn, torch.randn(1, N, C)) == h * per_head + cascade_adds + N * h * d * C


def test_flops_skip_phi_closed_form():
    C, g = 16, 4
    N, H = g * g, 2 * C
    phi = SkipAttention(C, g)
    expected = N * C * H + N * H + N * H * 25 + N * H + N * H * C + N * C + C * 3 + C + N * C
    #          fc1        gelu    dw 5x5        gelu    fc2        mean   eca     sigmoid mul
    assert _flops(phi, torch.randn(1, N, C)) == expected
