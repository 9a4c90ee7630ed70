import json

import numpy as np
import optuna
import pytest

from search_space import ArchSpec, SearchSpace, SpecError, StageSpec, presets, sample
from search_space.presets import patch_for


def _spec(**stage):
    return ArchSpec((StageSpec(**{"width": 32, "depth": 2, **stage}),), img_size=16, patch=4)


def test_json_round_trip_and_stable_id():
    spec = sample(np.random.default_rng(5))
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and again.arch_id == spec.arch_id and again.to_json() == spec.to_json()
    assert ArchSpec.from_json(json.dumps(json.loads(spec.to_json()), indent=2)).arch_id == spec.arch_id


def test_id_ignores_label_but_not_structure():
    a = _spec()
    assert ArchSpec(a.stages, a.img_size, patch=4, name="label").arch_id == a.arch_id
    assert _spec(heads=2).arch_id != a.arch_id


def test_short_string_is_canonical():
    spec = ArchSpec((StageSpec(64, 2, "prepbn", "sla", 4, 16, 1, 2, 4.0),
                     StageSpec(128, 3, "prepbn", "mhsa", 4, 16, 1, 1, 4.0, True, (1, 2))), 32, patch=4)
    assert spec.short() == "p4 64x2[prepbn·sla·h4k16v1·ffn2x4] 128x3[prepbn·mhsa·h4k16v1·ffn1x4·dw·skip1-2]"


@pytest.mark.parametrize("stage, message", [
    ({"heads": 3}, "3 heads do not divide width 32"),
    ({"skip": (0,)}, "SkipAt block 0 has no earlier attention in its stage"),
    ({"skip": (5,)}, "skip block 5 is outside 0..1"),
    ({"norm": "groupnorm"}, "unknown norm 'groupnorm'"),
    ({"attention": "flash"}, "unknown attention 'flash'"),
    ({"attention": "cga", "value_ratio": 2}, "value_ratio must be 1"),
    ({"depth": 0}, "width and depth must be positive"),
])
def test_validation_messages(stage, message):
    with pytest.raises(SpecError, match=message):
        _spec(**stage).validate()


def test_validation_of_geometry():
    with pytest.raises(SpecError, match="patch 3 not in"):
        ArchSpec((StageSpec(32, 1),), img_size=12, patch=3).validate()
    with pytest.raises(SpecError, match="patch 8 does not divide image size 12"):
        ArchSpec((StageSpec(32, 1),), img_size=12, patch=8).validate()
    with pytest.raises(SpecError, match="grid 3x3 cannot be downsampled"):
        ArchSpec((StageSpec(32, 1), StageSpec(64, 1)), img_size=12, patch=4).validate()
    with pytest.raises(SpecError, match="no stages"):
        ArchSpec(()).validate()


def test_malformed_json_messages():
    with pytest.raises(SpecError, match="not valid JSON"):
        ArchSpec.from_json("{oops")
    with pytest.raises(SpecError, match="unknown spec field"):
        ArchSpec.from_json('{"stages": [], "colour": 1}')
    with pytest.raises(SpecError, match="stage 0: missing"):
        ArchSpec.from_json('{"stages": [{"width": 8}]}')
    with pytest.raises(SpecError, match="stage 0: unknown field"):
        ArchSpec.from_json('{"stages": [{"width": 8, "depth": 1, "colour": 2}]}')


@pytest.mark.parametrize("fields, message", [
    ({"stages": 3}, "spec must be a JSON object with a 'stages' list"),
    ({"patch": "4"}, 'patch must be an integer (got "4")'),
    ({"img_size": 32.0}, "img_size must be an integer (got 32.0)"),
    ({"drop_path": None}, "drop_path must be a finite number (got null)"),
    ({"num_classes": 0, "stem": "x"}, "img_size, in_chans and num_classes must be positive (got 32, 3, 0); unknown stem "
                                      "'x'; choose one of conv, patch"),
    ({"stages": [{"width": 32, "depth": 2, "mlp_ratio": float("inf")}]}, "stage 0: mlp_ratio must be a finite number "
                                                                         "(got Infinity)"),
    ({"stages": [{"width": True, "depth": 2}]}, "stage 0: width must be an integer (got true)"),
    ({"stages": [{"width": 32, "depth": 1.5}]}, "stage 0: depth must be an integer (got 1.5)"),
    ({"stages": [{"width": 32, "depth": 2, "skip": 1}]}, "stage 0: skip must be a list of integers (got 1)"),
    ({"stages": [{"width": 32, "depth": 2, "dwconv": "yes"}]}, 'stage 0: dwconv must be true or false (got "yes")'),
])
def test_values_of_the_wrong_json_type_are_named(fields, message):
    text = json.dumps({"stages": [{"width": 32, "depth": 2, "mlp_ratio": 3}], "img_size": 32, **fields})
    with pytest.raises(SpecError) as e:
        ArchSpec.from_json(text).validate()
    assert str(e.value) == message
    assert ArchSpec.from_json(json.dumps({"stages": [{"width": 32, "depth": 2, "mlp_ratio": 3}]})).validate()


def test_every_validation_problem_is_reported_at_once():
    with pytest.raises(SpecError) as e:
        _spec(heads=3, norm="nope", skip=(0,)).validate()
    assert str(e.value).count(";") >= 2


def test_presets_scale_grid_to_input():
    assert patch_for(224, 1) == 16 and patch_for(32, 1) == 4 and patch_for(96, 1) == 8
    assert patch_for(224, 3) == 8 and patch_for(32, 3) == 4
    # tokens of at least 4x4 pixels: tiny images get a coarse grid, not single-pixel tokens
    assert patch_for(8, 1) == 4 and patch_for(28, 1) == 4
    # unless the downsampling cannot take the grid: the coarsest patch that it can
    assert patch_for(8, 3) == 2 and patch_for(28, 3) == 1
    ps = presets(32, 3, 10)
    assert ps["deit-tiny"].stages[0].width == 192 and ps["deit-tiny"].stages[0].depth == 12
    assert ps["skipat-tiny"].stages[0].skip == (3, 4, 5, 6, 7, 8)
    assert [s.width for s in ps["efficientvit-m0"].stages] == [64, 128, 192]
    assert {s.norm for p in ps.values() for s in p.stages} == {"layernorm", "prepbn", "batchnorm", "rmsnorm", "unified"}


def test_sampling_is_seeded_and_valid():
    a = [sample(np.random.default_rng(1)).arch_id for _ in range(3)]
    assert len(set(a)) == 1
    rng = np.random.default_rng(2)
    specs = [sample(rng, img_size=8, in_chans=1) for _ in range(100)]
    assert all(not s.problems() for s in specs)


def test_sampling_from_optuna_trial_uses_conditional_parameters():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(15):
        trial = study.ask()
        spec = sample(trial, img_size=32)
        study.tell(trial, 0.0)
        assert all(not k.startswith(f"s{len(spec.stages)}.") for k in trial.params)
        assert ("s0.value_ratio" in trial.params) == (spec.stages[0].attention != "cga")
        seen.add(spec.arch_id)
    assert len(seen) > 10


def test_space_override_file(tmp_path):
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"norms": ["batchnorm"], "attentions": ["sla"], "stages": [1]}))
    space = SearchSpace.load(f)
    spec = sample(np.random.default_rng(0), space)
    assert len(spec.stages) == 1 and spec.stages[0].norm == "batchnorm" and spec.stages[0].attention == "sla"
    f.write_text(json.dumps({"colours": [1]}))
    with pytest.raises(SpecError, match="unknown axis"):
        SearchSpace.load(f)
    f.write_text(json.dumps({"norms": ["groupnorm"]}))
    with pytest.raises(SpecError, match="unknown operator"):
        SearchSpace.load(f)


@pytest.mark.parametrize("override, message", [
    ([1, 2], "a search-space file holds a JSON object of {axis: [choices]}"),
    ({"widths": [64, "a"]}, 'widths: "a" is not an integer'),
    ({"depths": [2.5]}, "depths: 2.5 is not an integer"),
    ({"dwconv": [1]}, "dwconv: 1 is not true or false"),
    ({"norms": [{}]}, "norms: {} is not a string"),
    ({"max_grid": "8"}, 'max_grid: "8" is not an integer'),
    ({"widths": [0]}, "widths: 0 is outside the space (each must be positive)"),
    ({"patch": [3]}, "patch: 3 is outside the space (each must be one of [1, 2, 4, 8, 16])"),
    ({"stages": [1, 4]}, "stages: 4 is outside the space (each must be 1 to 3)"),
    ({"skip_fractions": [1.5]}, "skip_fractions: 1.5 is outside the space (each must be in [0, 1])"),
    ({"mlp_ratios": [float("nan")]}, "mlp_ratios: NaN is not a finite number"),
])
def test_space_file_choices_of_the_wrong_kind_are_named(tmp_path, override, message):
    f = tmp_path / "space.json"
    f.write_text(json.dumps(override))
    with pytest.raises(SpecError) as e:
        SearchSpace.load(f)
    assert str(e.value) == f"{f}: {message}"
    f.write_text(json.dumps({"mlp_ratios": [0.5, 2], "skip_fractions": [0, 1], "dwconv": [True], "max_grid": 8}))
    assert SearchSpace.load(f).mlp_ratios == (0.5, 2)


@pytest.mark.parametrize("override, img_size, said", [
    ({"widths": [32], "heads": [7]}, 8, "heads [7] divide none of the widths [32]: no stage gets them, every stage gets "
                                        "1 head"),
    ({"widths": [32, 48], "heads": [3, 5]}, 8, "heads [5] divide none of the widths [32, 48]: no stage gets them"),
    ({"patch": [1], "stages": [1, 2]}, 32, "no patch of [1] cuts 32-px images into a token grid of at most 16 a side (max_grid): every "
                         "spec gets patch 16"),
    ({"attentions": ["cga"], "value_ratios": [2]}, 8, "value_ratios [2] are never used: the attentions ['cga'] fix "
                                                      "their own ([1])"),
    ({"patch": [4, 8], "stages": [2, 3]}, 8, "stages [3] need a token grid that halves 2 time(s), which no patch of "
                                             "[4, 8] leaves on 8-px images: such specs get fewer stages"),
])
def test_space_choices_the_sampler_cannot_honour_are_warned_of(tmp_path, override, img_size, said):
    f = tmp_path / "space.json"
    f.write_text(json.dumps(override))
    with pytest.warns(UserWarning) as caught:
        space = SearchSpace.load(f, img_size)
    assert [str(w.message) for w in caught] == [f"{f}: {said}"]
    assert space.unusable_choices(img_size) == [said]
    assert all(SearchSpace().unusable_choices(size) == [] for size in (8, 28, 32, 64))  # the defaults: none


def test_a_space_file_is_searched_as_given_save_for_the_presets_the_run_trains(tmp_path):
    from nas.config import SearchConfig
    from nas.inputs import search_space_for

    f = tmp_path / "space.json"
    f.write_text(json.dumps({"norms": ["batchnorm", "prepbn"], "attentions": ["sla", "cga"], "stages": [2, 3]}))
    narrowed, none = search_space_for(SearchConfig(name="x", target_ms=1.0, latency_model="", space=str(f),
                                                   presets="none"), (8, 1, 10))
    assert (narrowed.norms, narrowed.attentions, narrowed.stages, none) == (("batchnorm", "prepbn"), ("sla", "cga"),
                                                                            (2, 3), {})
    rng = np.random.default_rng(0)
    assert all(s.stages[0].norm in ("batchnorm", "prepbn") and {t.attention for t in s.stages} <= {"sla", "cga"}
               for s in (sample(rng, narrowed, 8, 1, 10) for _ in range(20)))
    with pytest.warns(UserWarning, match=r"the seed presets add .*norms \['layernorm'\], attentions \['mhsa'\] to "
                                         r"its choices; --presets none searches the file's choices only"):
        widened, params = search_space_for(SearchConfig(name="x", target_ms=1.0, latency_model="", space=str(f),
                                                        presets="deit-tiny"), (8, 1, 10))
    assert list(params) == ["deit-tiny"] and "layernorm" in widened.norms and "rmsnorm" not in widened.norms


def test_a_whole_number_in_a_float_field_names_the_same_architecture():
    as_floats = ArchSpec(stages=(StageSpec(32, 2, mlp_ratio=3.0),), drop_path=0.1)
    by_hand = ArchSpec.from_json(json.dumps({"stages": [{"width": 32, "depth": 2, "mlp_ratio": 3}], "drop_path": 0.1}))
    assert by_hand == as_floats and by_hand.arch_id == as_floats.arch_id and by_hand.to_json() == as_floats.to_json()
    assert type(ArchSpec(stages=(StageSpec(32, 2, mlp_ratio=2),), drop_path=1).drop_path) is float
    from_whole_numbers, from_floats = SearchSpace(mlp_ratios=(2, 4)), SearchSpace(mlp_ratios=(2.0, 4.0))
    assert [sample(seed, from_whole_numbers).arch_id for seed in range(5)] == [
        sample(seed, from_floats).arch_id for seed in range(5)]  # as a space file's [2, 4] and [2.0, 4.0]


def test_specs_round_trip_through_dicts_and_keep_numeric_bools():
    spec = sample(np.random.default_rng(5))
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    written = {"stages": [{"width": 32, "depth": 2, "dwconv": 1}], "img_size": 16}  # sampled from a space of [0, 1]
    again = ArchSpec.from_json(json.dumps(written)).validate()
    assert again.stages[0].dwconv == 1 and again.arch_id == ArchSpec.from_json(again.to_json()).arch_id
