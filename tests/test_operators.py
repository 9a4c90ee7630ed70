"""The operator registry: a toy attention registered from outside the package is validated,
sampled, built, deployed and priced like a built-in one; every tally holds its kernels' bytes to
the shapes of the model it describes."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from latency_models.features import KINDS, F32, tally
from search_space import ArchSpec, SearchSpace, SpecError, StageSpec, build_model, count_flops, deploy, sample
import search
from search_space import operators
from search_space.operators import register, unregister
from tests.test_launch_counts import COUNTED, SPECS, profiled_calls
from tests.toy_operator import MEANMIX


@pytest.fixture
def meanmix():
    register(MEANMIX)
    yield MEANMIX
    unregister(MEANMIX)


def toy_spec(norm: str) -> ArchSpec:
    return ArchSpec((StageSpec(16, 2, norm, "meanmix", heads=2, key_dim=8, ffns=2),
                     StageSpec(32, 1, norm, "mhsa", heads=2, key_dim=8)), img_size=16, in_chans=3, patch=4)


def test_an_unregistered_attention_is_refused_with_the_registered_names():
    with pytest.raises(SpecError, match="unknown attention 'meanmix'; choose one of mhsa, sla, cga"):
        toy_spec("layernorm").validate()


def test_a_registered_attention_is_offered_and_sampled(meanmix):
    assert "meanmix" in SearchSpace().attentions
    spec = sample(np.random.default_rng(0), SearchSpace(attentions=("meanmix",)), 16, 3, 10)
    assert {s.attention for s in spec.stages} == {"meanmix"}
    with pytest.raises(SpecError, match="unknown attention 'mhsa2'; choose one of mhsa, sla, cga, meanmix"):
        ArchSpec((StageSpec(16, 1, attention="mhsa2"),), img_size=16, patch=4).validate()


@pytest.mark.parametrize("norm", ["prepbn", "layernorm"])  # folded into the mixer; turned into Pre-RMSNorm
def test_a_registered_attention_trains_deploys_and_is_priced(meanmix, norm):
    torch.manual_seed(0)
    spec = toy_spec(norm)
    model = build_model(spec).train()
    x = torch.randn(4, 3, 16, 16)
    model(x).square().sum().backward()
    assert all(p.grad is not None for p in model.stages[0].blocks[0].attn.fn.parameters())
    model.eval()
    deployed = deploy(model)
    assert torch.allclose(deployed(x), model(x), atol=1e-4)
    t = tally(spec)
    assert round(sum(t.flops)) == count_flops(deployed)
    seen = profiled_calls(deployed, x[:1])
    assert {k: t.calls[KINDS.index(k)] for k in COUNTED} == {k: seen.get(k, 0) for k in COUNTED}


def module_bytes(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Bytes each Linear and conv of a forward pass reads and writes, by tally kind: a Linear its
    input, weight, bias and output; a conv its weight, its output and its input at the output's
    resolution (the tally's convention: a strided conv's extra reads are the learned correction's)."""
    moved = {"linear": 0.0, "conv": 0.0, "dwconv": 0.0}

    def hook(m, inputs, out):
        if isinstance(m, nn.Linear):
            moved["linear"] += F32 * (inputs[0].numel() + m.weight.numel() + m.out_features + out.numel())
            return
        cin, cout = m.in_channels, m.out_channels
        pixels = out.numel() // cout
        weight = m.weight.numel() if isinstance(m, nn.Conv2d) else 0  # ECA's 3 weights are not counted
        moved["dwconv" if m.groups > 1 else "conv"] += F32 * (pixels * (cin + cout) + weight)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return moved


@pytest.mark.parametrize("name", list(SPECS))
def test_tallied_bytes_equal_the_built_models_shapes(name):
    spec = SPECS[name]
    moved = module_bytes(deploy(build_model(spec).eval()), torch.randn(1, spec.in_chans, spec.img_size, spec.img_size))
    t = tally(spec)
    assert {k: t.bytes[KINDS.index(k)] for k in moved} == pytest.approx(moved, rel=1e-12), spec.short()


@pytest.fixture
def plugins(monkeypatch):
    """ETNAS_OPERATORS as a fresh process would read it; the toy is unregistered afterwards."""
    def use(value: str) -> None:
        monkeypatch.setenv(operators.PLUGINS_VARIABLE, value)
        monkeypatch.setattr(operators, "_plugins_loaded", False)
    yield use
    if MEANMIX.name in operators.ATTENTIONS:
        unregister(MEANMIX)


def test_a_plugin_named_in_the_environment_reaches_the_command_line(plugins, tmp_path):
    plugins("tests.toy_plugin")
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"attentions": ["meanmix"], "stages": [1]}))
    search.main(["space", "sample", "--n", "3", "--img-size", "16", "--space", str(space),
                 "--out", str(tmp_path / "specs.jsonl")])
    specs = [ArchSpec.from_json(line) for line in (tmp_path / "specs.jsonl").read_text().splitlines()]
    assert len(specs) == 3 and all(s.stages[0].attention == "meanmix" for s in specs)


def test_a_plugin_that_fails_to_import_is_one_line_and_exit_2(plugins, tmp_path, capsys):
    plugins("tests.toy_plugin, tests.no_such_plugin")
    with pytest.raises(SystemExit) as stop:
        search.main(["space", "sample", "--n", "1", "--out", str(tmp_path / "specs.jsonl")])
    said = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in said
    assert "ETNAS_OPERATORS names module 'tests.no_such_plugin', which failed to import" in said
