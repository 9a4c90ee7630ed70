"""The seed presets at paper scale (224 px, 1000 classes) against their papers: timm's implementations
where it has one (built with random weights), else timm's DeiT-T plus the paper's operators."""
import pytest
import timm
import torch

from latency_models.features import total_flops
from search_space import build_model, count_flops, count_params, deploy, preset, presets
from search_space.presets import SEARCH_SCALE

TIMM_DEIT_T = "deit_tiny_patch16_224"
C, N, BLOCKS, NORMS = 192, 196, 12, 25  # DeiT-T: width, patch tokens, blocks, norms (2 a block + final)


def timm_params(name: str, **kwargs) -> int:
    return count_params(timm.create_model(name, pretrained=False, **kwargs))


def timm_stage_grids(model: torch.nn.Module, stages) -> list[int]:
    sides = []
    hooks = [s.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1])) for s in stages]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return sides


def reference_params(name: str) -> int:
    """Parameters of the paper's model: timm's where it exists; otherwise timm's DeiT-T with the
    paper's operators sized as methods.md states them."""
    deit = timm_params(TIMM_DEIT_T)
    cls_token_and_pos = 2 * C  # timm's DeiT carries a CLS token; SLAB and ours pool over patches
    attention = C * 3 * C + 3 * C + C * C + C  # qkv and proj
    phi = (C * 2 * C + 2 * C) + (2 * C * 25 + 2 * C) + (2 * C * C + C) + 3  # LeFF + ECA
    sla_extra = N * C + (C // 3) * 25 + C // 3  # positional term on k, DWC(V) shared by heads
    return {
        "deit-tiny": lambda: deit,
        "efficientvit-m0": lambda: timm_params("efficientvit_m0"),
        "pre-rmsnorm": lambda: timm_params(TIMM_DEIT_T, norm_layer=torch.nn.RMSNorm),
        "unified-norm": lambda: deit,  # UN: a weight and a bias per channel, as LayerNorm
        # PRepBN: LayerNorm + BatchNorm + alpha in every norm
        "slab-deit": lambda: deit - cls_token_and_pos + BLOCKS * sla_extra + NORMS * (2 * C + 1),
        "skipat-tiny": lambda: deit + 6 * (phi - attention - 2 * C),  # blocks 3..8: Phi, no norm1 + attention
    }[name]()


@pytest.mark.parametrize("name", list(presets()))
def test_presets_match_their_papers_parameter_counts_within_3_percent(name):
    ours = count_params(build_model(preset(name)))
    ref = reference_params(name)
    assert abs(ours - ref) / ref <= 0.03, f"{name}: {ours:,} parameters, paper {ref:,}"


def test_deit_tiny_is_timms_to_the_class_token():
    ours, ref = count_params(build_model(preset("deit-tiny"))), timm_params(TIMM_DEIT_T)
    assert ref - ours == 2 * C  # CLS token and its position: we pool over patch tokens (as SLAB does)


def test_token_grids_match_timm():
    deit = timm.create_model(TIMM_DEIT_T, pretrained=False)
    assert deit.patch_embed.grid_size == (14, 14)
    assert preset("deit-tiny").grids() == [14]
    evit = timm.create_model("efficientvit_m0", pretrained=False)
    assert timm_stage_grids(evit, evit.stages) == preset("efficientvit-m0").grids() == [14, 7, 4]


def test_efficientvit_follows_the_papers_macro_architecture():
    spec = preset("efficientvit-m0")
    assert (spec.stem, spec.downsample, spec.patch) == ("conv", "efficientvit", 16)
    assert [(s.width, s.depth, s.heads, s.key_dim) for s in spec.stages] == [(64, 1, 4, 16), (128, 2, 4, 16),
                                                                             (192, 3, 4, 16)]
    model = build_model(spec)
    assert [m.out_channels for m in model.stem.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 16, 32, 64]
    assert len(list(model.stages[1].downsample.modules())) > 20  # the residual DW + FFN, merging with SE


def test_search_scale_is_half_width_and_depth_on_the_same_design():
    paper, small = presets(), presets(32, 3, 10, SEARCH_SCALE, SEARCH_SCALE)
    for name in paper:
        p, s = paper[name], small[name]
        assert (p.stem, p.downsample) == (s.stem, s.downsample)
        assert [st.width // 2 for st in p.stages] == [st.width for st in s.stages]
        assert [max(1, round(st.depth / 2)) for st in p.stages] == [st.depth for st in s.stages]
        assert s.grids()[0] == 8  # the finest grid of at most 14x14 a power-of-two patch gives at 32 px


@pytest.mark.parametrize("name", ["deit-tiny", "efficientvit-m0"])
def test_analytic_flops_match_fvcore_at_paper_scale(name):
    spec = preset(name)
    assert total_flops(spec) == count_flops(deploy(build_model(spec)))
