import numpy as np
import pytest
import torch
import torch.nn as nn

from search_space import build_model, deploy, presets, sample
from search_space.check import check_spec, deployed_check, randomize_norms
from search_space.norms import BN_FAMILY

PRESETS = presets(32, 3, 10, width_mult=0.5, depth_mult=0.5)
SAMPLES = [sample(np.random.default_rng(1000 + i), img_size=16) for i in range(50)]


@pytest.mark.parametrize("spec", PRESETS.values(), ids=PRESETS.keys())
def test_preset_deploy_equivalence(spec):
    res = check_spec(spec, seed=1)
    assert res["max_rel_err"] <= 1e-4
    assert res["leftover_norms"] == [] and res["no_grad"] == []


@pytest.mark.parametrize("spec", SAMPLES, ids=[s.arch_id for s in SAMPLES])
def test_sampled_deploy_equivalence(spec):
    _, res = deployed_check(spec, seed=2)
    assert res["max_rel_err"] <= 1e-4, spec.short()
    assert res["leftover_norms"] == []


def _trained_like(spec):
    model = build_model(spec)
    randomize_norms(model, torch.Generator().manual_seed(0))
    return model.eval()


def test_layernorm_stage_becomes_affine_free_rmsnorm():
    model = _trained_like(PRESETS["deit-tiny"])
    d = deploy(model)
    assert not any(isinstance(m, nn.LayerNorm) for m in d.modules())
    rms = [m for m in d.modules() if isinstance(m, nn.RMSNorm)]
    assert rms and all(m.weight is None for m in rms)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(model(x), d(x), rtol=1e-4, atol=1e-5)


def test_skipat_stage_keeps_layernorm():
    d = deploy(_trained_like(PRESETS["skipat-tiny"]))
    assert any(isinstance(m, nn.LayerNorm) for m in d.modules())


def test_bn_family_folds_away_and_cga_bias_is_cached():
    for name in ("slab-deit", "efficientvit-m0", "unified-norm"):
        d = deploy(_trained_like(PRESETS[name]))
        assert not any(isinstance(m, (*BN_FAMILY, nn.BatchNorm2d, nn.LayerNorm)) for m in d.modules()), name
    model = _trained_like(PRESETS["efficientvit-m0"])
    with torch.no_grad():  # trained relative-position biases (randomize_norms leaves them at zero)
        for m in model.modules():
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(generator=torch.Generator().manual_seed(1))
    d = deploy(model)
    deployed = dict(d.named_modules())
    cga = [(m, deployed[name]) for name, m in model.named_modules() if hasattr(m, "cached_bias")]
    assert cga and all(c.cached_bias is not None for _, c in cga)
    for m, c in cga:  # the cache is the gathered table, and the deployed model uses it
        assert torch.equal(c.cached_bias, m.attention_biases[:, m.bias_idx])
        with torch.no_grad():
            c.attention_biases.zero_()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), d(x), rtol=1e-4, atol=1e-5)


def test_deploy_leaves_the_original_untouched_and_frozen():
    model = _trained_like(PRESETS["slab-deit"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = deploy(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in d.parameters())


@pytest.mark.parametrize("spec", [*PRESETS.values(), *SAMPLES[:10]], ids=[*PRESETS, *(s.arch_id for s in SAMPLES[:10])])
def test_every_tensor_of_the_deployed_model_follows_to(spec):
    """A tensor held as a plain attribute stays behind on `.to('cuda')` (it broke CGA on a GPU)."""
    for name, module in deploy(build_model(spec)).named_modules():
        stray = [k for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
        assert not stray, f"{name}: {stray} are neither parameters nor buffers"


@pytest.mark.parametrize("spec", PRESETS.values(), ids=PRESETS.keys())
def test_deployed_linears_read_row_major_tokens(spec):
    """With the norms folded away, nothing re-lays the token stream out before a Linear: a
    transposed input would run it as a bmm with the weight copied per sample (x1.7 at batch 32)."""
    model = deploy(build_model(spec))
    transposed = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(lambda m, inp, name=name: transposed.append(name) if inp[0].stride(-1) != 1 else None)
    with torch.inference_mode():
        model(torch.randn(4, 3, 32, 32))
    assert transposed == []
