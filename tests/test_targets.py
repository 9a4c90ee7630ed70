"""A search's other latency targets after the search: kept in the run's config, timed by `export`
where this machine is that target, and shown in the model card."""
import json
import types

import pytest
import torch

from latency_models import LatencyModel
from latency_models.measure import fingerprint, fingerprint_id
from nas.package import measured_text, other_target_latencies, other_target_row, timing_config, unmeasurable_here
from nas.schema import Attr
from nas.targets import OTHER_TARGETS, as_constraint, remember_targets, target_records
from search_space import build_model, deploy, presets

HERE_TORCH = fingerprint("cpu", "torch", 1, 1, 8)


def elsewhere(fp: dict, **changes) -> dict:
    moved = {**{k: v for k, v in fp.items() if k != "id"}, **changes}
    return {**moved, "id": fingerprint_id(moved)}


def test_a_target_is_measurable_only_on_its_own_device_runtime_and_file(tmp_path):
    files = {"fp32": tmp_path / "model.onnx", "int8": None}
    assert unmeasurable_here(HERE_TORCH, 8, files) is None
    why = unmeasurable_here(elsewhere(HERE_TORCH, cpu="Some Other CPU"), 8, files)
    assert why.startswith("another device") and "Some Other CPU" in why
    assert "1 thread at batch 1" in unmeasurable_here(fingerprint("cpu", "torch", 2, 1, 8), 8, files)
    int8 = fingerprint("cpu", "onnxruntime", 1, 1, 8, "int8")
    assert "export with --int8" in unmeasurable_here(int8, 8, files)
    assert unmeasurable_here(int8, 8, {**files, "int8": tmp_path / "model.int8.onnx"}) is None
    assert "export the onnx format" in unmeasurable_here(fingerprint("cpu", "onnxruntime", 1, 1, 8), 8, {"fp32": None})
    assert "img_size" in unmeasurable_here(HERE_TORCH, 16, files)  # timed at another input size


def test_targets_given_on_resuming_are_added_to_the_config_once():
    phone = LatencyModel(fingerprint=elsewhere(HERE_TORCH, cpu="Phone CPU"), reference_ms=1.5)
    cfg = {"target_ms": 2.0, OTHER_TARGETS: target_records({"phone": phone})}
    assert remember_targets(cfg, {"phone": phone}) is cfg  # nothing new
    here = LatencyModel(fingerprint=HERE_TORCH, reference_ms=None)
    updated = remember_targets(cfg, {"phone": phone, "here": here})
    assert updated[OTHER_TARGETS]["here"] == {"fingerprint": HERE_TORCH, "reference_ms": None}
    assert updated[OTHER_TARGETS]["phone"]["reference_ms"] == 1.5
    swapped = as_constraint(updated, "phone")
    assert (swapped["latency_fingerprint"], swapped["latency_reference_ms"]) == (phone.fingerprint["id"], 1.5)


def test_export_times_the_targets_this_machine_is_and_the_card_says_which():
    torch.manual_seed(0)
    deployed = deploy(build_model(presets(8, 1, 10, width_mult=0.25, depth_mult=0.25)["deit-tiny"])).eval()
    phone = elsewhere(HERE_TORCH, cpu="Phone CPU")
    cfg = {OTHER_TARGETS: {"here": {"fingerprint": HERE_TORCH, "reference_ms": None},
                           "phone": {"fingerprint": phone, "reference_ms": 2.0}}}
    rows = other_target_latencies(deployed, cfg, {Attr.PRED_MS_TARGETS: {"here": 0.5, "phone": 3.0}},
                                  {"fp32": None, "int8": None})
    here, far = rows
    assert here["timing"]["measured_ms"] > 0 and not here["timing"]["on_predictor_scale"]
    assert here["timing"]["device"] == HERE_TORCH and "not_measured" not in here
    assert "timing" not in far and far["not_measured"].startswith("another device")
    card_here, card_far = other_target_row(here), other_target_row(far)
    rel = (0.5 - here["timing"]["measured_ms"]) / here["timing"]["measured_ms"]
    assert card_here.startswith("| latency on target here | 0.500 ms predicted;") and f"{rel:+.1%} predicted" in card_here
    assert f"measured here {here['timing']['measured_ms']:.3f} ms median" in card_here and "torch" in card_here
    assert "as timed," in card_here and "predictor's scale" not in card_here  # no scale to put it on
    assert "3.000 ms predicted; not measured here: another device" in card_far and "Phone CPU" in card_far


@pytest.mark.parametrize("attrs", [{}, {Attr.PRED_MS_TARGETS: {"laptop": 1.0}}])
def test_a_target_added_after_the_model_was_searched_has_no_prediction_and_says_so(attrs):
    """A trial from before the target was added records no prediction for it (or none at all)."""
    phone = elsewhere(HERE_TORCH, cpu="Phone CPU")
    cfg = {OTHER_TARGETS: {"phone": {"fingerprint": phone, "reference_ms": 2.0}}}
    not_timed = types.SimpleNamespace(spec=types.SimpleNamespace(img_size=8))  # another device: never run
    (row,) = other_target_latencies(not_timed, cfg, attrs, {"fp32": None, "int8": None})
    assert row["pred_ms"] is None
    assert "| latency on target phone | no prediction recorded; not measured here: another device" in other_target_row(row)


def test_a_label_given_again_must_name_the_model_the_run_recorded():
    from nas import SearchError

    phone = LatencyModel(fingerprint=elsewhere(HERE_TORCH, cpu="Phone CPU"), reference_ms=1.5)
    cfg = {"target_ms": 2.0, OTHER_TARGETS: target_records({"phone": phone})}
    refitted = LatencyModel(fingerprint=phone.fingerprint, reference_ms=1.7)
    with pytest.raises(SearchError, match="not the one this run recorded as target phone"):
        remember_targets(cfg, {"phone": refitted})


def test_fp32_and_torch_tallies_have_no_dequantized_weights():
    from latency_models.features import FEATURE_NAMES, features

    spec = presets(32, 3, 10, width_mult=0.5, depth_mult=0.5)["unified-norm"]
    assert FEATURE_NAMES[-2:] == ["dequantized_weight_calls", "dequantized_weight_elements"]
    for runtime in ("torch", "onnxruntime"):
        assert list(features(spec, runtime)[-2:]) == [0, 0]
    assert features(spec, "onnxruntime", "int8")[-2] > 0  # its norms fold into Linears that stay float


def test_a_card_leads_with_the_timing_as_taken_and_gives_the_predictors_scale_beside_it():
    timing = {"measured_ms": 2.0, "p10_ms": 1.8, "p90_ms": 2.4, "on_predictor_scale": True, "anchor_ms": 0.5,
              "reference_ms": 1.0}
    assert measured_text(timing) == "1.000 ms median (p10-p90 0.900-1.200) as timed, 2.000 ms on the predictor's scale"
    assert measured_text({**timing, "on_predictor_scale": False}) == "2.000 ms median (p10-p90 1.800-2.400) as timed"
    legacy = {k: v for k, v in timing.items() if k not in ("anchor_ms", "reference_ms")}  # a report from before
    assert measured_text(legacy) == "2.000 ms median (p10-p90 1.800-2.400) on the predictor's scale"


def test_a_file_timed_on_a_targets_scale_is_not_timed_again_for_its_row():
    int8 = fingerprint("cpu", "onnxruntime", 1, 1, 8, "int8")
    int8 = {**int8, "id": fingerprint_id(int8)}
    cfg = {"latency_target": HERE_TORCH, OTHER_TARGETS: {"cpu-int8": {"fingerprint": int8, "reference_ms": 3.0}}}
    assert timing_config(cfg, "int8")["latency_reference_ms"] == 3.0  # the int8 file lands on cpu-int8's scale
    assert timing_config(cfg, "fp32") is cfg  # no fp32 onnxruntime target: the constraint's, as before
    earlier = {"measured_ms": 1.25, "p10_ms": 1.2, "p90_ms": 1.3, "on_predictor_scale": True, "reference_ms": 3.0,
               "anchor_ms": 1.5, "device": {k: v for k, v in int8.items() if k != "id"}}
    never_run = types.SimpleNamespace(spec=types.SimpleNamespace(img_size=8))  # timing it again would fail
    (row,) = other_target_latencies(never_run, cfg, {Attr.PRED_MS_TARGETS: {"cpu-int8": 1.0}},
                                    {"fp32": None, "int8": "model.int8.onnx"}, {"int8": earlier})
    assert row["timing"] is earlier and "measured here 0.625 ms median (p10-p90 0.600-0.650) as timed, 1.250 ms on the " \
                                        "predictor's scale, -20.0% predicted vs measured" in other_target_row(row)


def test_a_calibrated_target_read_back_from_a_run_is_the_machines_own():
    """A run's config.json keeps its model's fingerprint with the table's id; this machine's, computed
    before a calibration, has none: the two are one target, compared by content."""
    from latency_models.measure import fingerprint, fingerprint_id
    from nas.targets import same_target

    here = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    recorded = json.loads(json.dumps({**here, "id": fingerprint_id(here)}))
    assert same_target(recorded, here) and same_target(recorded, recorded)
    assert not same_target(recorded, {**here, "threads": 2})
    assert not same_target(recorded, {**recorded, "id": "0123456789"})  # ids, where both have one
