import json
import subprocess
import sys
import time
import warnings

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from latency_models import LatencyModel, ModelFileError, TableError, read_table
from latency_models.table import append_row
from latency_models.calibrate import fingerprint_mismatch
from latency_models.features import FEATURE_NAMES, KINDS, feature_matrix, tally, total_flops
from latency_models.measure import (call_times, equal_chunks, exported_files, fingerprint, fingerprint_id,
                                     interleaved_stats, measure_all, remove_common_slowdown, time_interleaved)
from latency_models.validate import fit_and_report, metrics
from search_space import ArchSpec, SearchSpace, StageSpec, build_model, count_flops, deploy, presets, sample

from .helpers import ROOT, one_line_error, run_cli, synthetic_ms

TINY_SPACE = SearchSpace(widths=(16, 32), depths=(1, 2), stages=(1,), ffns=(1,))
ONE_THREAD = {"device": "cpu", "threads": 1, "batch": 1}  # the default target's timing setting


def tiny_specs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample(rng, TINY_SPACE, 8, 1, 10) for _ in range(n)]


@pytest.mark.slow  # fvcore traces 31 models
def test_analytic_flops_equal_fvcore_on_the_deployed_model():
    rng = np.random.default_rng(7)
    specs = list(presets(32, 3, 10, 0.5, 0.5).values()) + [sample(rng, img_size=32) for _ in range(25)]
    for spec in specs:
        assert total_flops(spec) == count_flops(deploy(build_model(spec))), spec.short()


def test_interleaved_timer_calls_each_runner_once_per_sweep_in_shuffled_order():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    order, ms = call_times(runners, sweeps=6, warmup_calls=1, warmup_sweeps=1, warm_calls=2)
    assert len(order) == len(ms) == 24 and (ms >= 0).all()
    sweeps = [order[i:i + 4] for i in range(0, 24, 4)]
    assert all(sorted(s) == list("abcd") for s in sweeps)  # every runner once per sweep
    assert len({tuple(s) for s in sweeps}) > 1  # the order changes between sweeps
    per_turn = 3  # two warm calls, then the timed one
    assert calls[:4] == list("abcd") and len(calls) == 4 + per_turn * (4 + 24)  # warm-up, untimed sweep, timed
    turns = [calls[i:i + per_turn] for i in range(4, len(calls), per_turn)]
    assert all(len(set(turn)) == 1 for turn in turns)  # warm calls of the same runner before each timed one
    assert [turn[-1] for turn in turns[4:]] == order


def test_warm_calls_time_a_model_warm_whatever_ran_before_it():
    """A runner that is slow when another ran last (its weights out of the caches) reads fast
    after warm calls, slow without."""
    last = []

    def runner(key, warm_ms=1.0, cold_ms=4.0):
        def run():
            time.sleep((warm_ms if last[-1:] == [key] else cold_ms) / 1000)
            last.append(key)
        return run

    runners = {k: runner(k) for k in "abc"}
    warm = interleaved_stats(*call_times(runners, sweeps=10, warmup_calls=1, warmup_sweeps=0, warm_calls=2))
    cold = interleaved_stats(*call_times(runners, sweeps=10, warmup_calls=1, warmup_sweeps=0, warm_calls=0))
    for k in "abc":
        assert 1.0 <= warm[k]["raw_median_ms"] < 2.5 <= 4.0 <= cold[k]["raw_median_ms"]


def test_timer_reports_ordered_statistics():
    stats = time_interleaved({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.003)}, sweeps=20)
    for k, asked_ms in (("fast", 1.0), ("slow", 3.0)):
        s = stats[k]
        assert s["repeats"] == 20 and 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"] < 50
        assert s["raw_median_ms"] >= asked_ms  # a sleep never returns early; the steady figures are
        # rescaled to the session's speed, so on a crowded machine they may read below it
    assert stats["slow"]["median_ms"] > 2 * stats["fast"]["median_ms"]


def spell_timings(seed, true, sweeps=50):
    """Calls of models with latencies `true` in shuffled sweeps, half of the time inside slow spells
    (x1.1-x1.8 for 4-12 calls) that hit whatever runs then, plus 1% noise per call."""
    rng = np.random.default_rng(seed)
    who = np.concatenate([rng.permutation(len(true)) for _ in range(sweeps)])
    slow, i = np.zeros(len(who)), 0
    while i < len(who):
        length = int(rng.integers(4, 13))
        slow[i:i + length] = np.log(rng.uniform(1.1, 1.8)) if rng.random() < 0.5 else 0.0
        i += length
    return who, true[who] * np.exp(slow + rng.normal(0, 0.01, len(who)))


def test_common_slowdown_is_taken_out_of_each_call():
    true = np.array([1.0, 2.5, 7.0, 4.0])
    raw_err, fixed_err = [], []
    for seed in range(10):
        who, ms = spell_timings(seed, true)
        steady = remove_common_slowdown(who, ms)
        for calls, errs in ((ms, raw_err), (steady, fixed_err)):
            med = np.array([np.median(calls[who == m]) for m in range(len(true))])
            errs.append(np.abs(med / med[0] / (true / true[0]) - 1).max())  # worst latency ratio
    assert max(raw_err) > 0.1  # slow spells move raw medians' ratios by over 10% in some sessions
    assert max(fixed_err) <= 0.015  # corrected, every ratio is within 1.5% in every session
    lone = np.full(10, 2.0)
    assert np.array_equal(remove_common_slowdown(np.zeros(10, dtype=int), lone), lone)  # nothing to compare with


def test_measure_appends_rows_and_resumes(tmp_path):
    out = tmp_path / "t.csv"
    specs = tiny_specs(4)
    rows, totals = [], []

    def on_row(row: dict, timings: int) -> None:
        rows.append(row)
        totals.append(timings)
    measure_all(specs[:2], out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5, on_row=on_row)
    assert len(rows) == 2 and totals == [2, 2]
    # resumes: 2 new, and a progress bar's total counts only those
    measure_all(specs, out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5, on_row=on_row)
    assert len(rows) == 4 and totals[2:] == [2, 2]
    twice = []
    measure_all(specs[:2], tmp_path / "twice.csv", runtime="torch", **ONE_THREAD, remeasure=1.0, sweeps=5,
                on_row=lambda row, timings: twice.append(timings))
    assert twice == [4] * 4  # each timed a second time: the total counts those too
    df = read_table(out)
    assert sorted(df["arch_id"]) == sorted(s.arch_id for s in specs)
    for col in ("arch_id", "spec_json", "median_ms", "p10_ms", "p90_ms", "repeats", "fingerprint"):
        assert col in df.columns
    fp = json.loads(df["fingerprint_json"].iloc[0])
    assert fp["threads"] == 1 and fp["runtime"] == "torch" and fp["img_size"] == 8
    assert (df["fingerprint"] == fingerprint_id(fp)).all()
    assert df["reference_ms"].nunique() == 1  # the resumed run kept the table's reference


def test_measure_times_chunks_with_the_anchor_and_scales_them_to_one_reference(tmp_path, monkeypatch):
    """Each chunk runs at another machine speed (x1, x2, x1.5); every row still lands on the
    first chunk's scale, because it is timed relative to the anchor in its own chunk."""
    from latency_models import measure

    chunks, speeds = [], iter([1.0, 2.0, 1.5])
    specs = tiny_specs(5, seed=1)
    true = {s.arch_id: 1.0 + i for i, s in enumerate(specs)} | {measure.ANCHOR: 4.0}

    def fake_timer(runners, sweeps, device):
        chunks.append(sorted(runners))
        f = next(speeds)
        return {k: {"median_ms": true[k] * f, "p10_ms": true[k] * f * 0.9, "p90_ms": true[k] * f * 1.1,
                    "raw_median_ms": true[k] * f * 1.2, "repeats": sweeps} for k in runners}

    monkeypatch.setattr(measure, "time_interleaved", fake_timer)
    out = tmp_path / "t.csv"
    measure_all(specs, out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=7, chunk=2)
    assert [len(c) for c in chunks] == [2, 3, 3] and all(measure.ANCHOR in c for c in chunks)  # 1 + 2 + 2, balanced
    df = read_table(out).set_index("arch_id")
    assert (df["reference_ms"] == 4.0).all()  # the anchor's latency in the first chunk
    assert np.allclose(df["median_ms"], [true[a] for a in df.index])  # every chunk on that scale
    assert np.allclose(df["p90_ms"] / df["median_ms"], 1.1) and (df["repeats"] == 7).all()
    assert sorted(df["anchor_ms"].unique()) == [4.0, 6.0, 8.0]  # the machine's speed, as it was
    assert np.allclose(df["raw_median_ms"] / df["anchor_ms"] * 4.0, [1.2 * true[a] for a in df.index])


@pytest.mark.parametrize("n, chunk", [(1, 16), (16, 16), (17, 16), (33, 16), (171, 16), (5, 2)])
def test_chunks_cover_everything_once_in_the_fewest_pieces_of_near_equal_size(n, chunk):
    pieces = equal_chunks(list(range(n)), chunk)
    sizes = [len(p) for p in pieces]
    assert sum(pieces, []) == list(range(n)) and len(pieces) == -(-n // chunk)
    assert max(sizes) <= chunk and max(sizes) - min(sizes) <= 1


def test_a_given_reference_is_used_and_a_tables_own_is_kept(tmp_path):
    out = tmp_path / "t.csv"
    specs = tiny_specs(3, seed=2)
    measure_all(specs[:1], out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5, reference_ms=123.0)
    assert read_table(out)["reference_ms"].tolist() == [123.0]
    measure_all(specs[:2], out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5)  # appending keeps it
    assert read_table(out)["reference_ms"].tolist() == [123.0, 123.0]
    with pytest.raises(TableError, match="reference of 123.0000 ms, not the 7.0000 ms"):
        measure_all(specs, out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5, reference_ms=7.0)


@pytest.mark.parametrize("model_kwargs, message", [
    ({"cpu": "Another Machine"}, "was measured on another device or setting"),
    ({}, "before timings were scaled to a reference"),
])
def test_measure_refuses_a_reference_it_cannot_use(tmp_path, model_kwargs, message):
    fp = fingerprint("cpu", "torch", 1, 1, 8)
    fp = {**fp, **model_kwargs, "id": fingerprint_id({**fp, **model_kwargs})}
    reference = 3.0 if model_kwargs else None
    LatencyModel(fingerprint=fp, reference_ms=reference).save(tmp_path / "ref.model")
    res = run_cli("measure", "--runtime", "torch", "--n", "0", "--img-size", "8", "--in-chans", "1",
                  "--reference", tmp_path / "ref.model",
                  "--out", tmp_path / "t.csv", check=False)
    one_line_error(res, message)
    assert not (tmp_path / "t.csv").exists()  # refused before measuring anything


def test_appending_keeps_an_older_tables_header_but_measuring_into_it_is_refused(tmp_path):
    out = tmp_path / "old.csv"
    spec = tiny_specs(1)[0]
    fid = fingerprint_id(fingerprint("cpu", "torch", 1, 1, 8))
    quoted = '"' + spec.to_json().replace('"', '""') + '"'
    out.write_text("arch_id,spec_json,median_ms,p10_ms,p90_ms,repeats,fingerprint\n"
                   f"a1,{quoted},1.0,0.9,1.1,30,{fid}\n")
    append_row(out, {"arch_id": "a2", "spec_json": spec.to_json(), "median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.1,
                     "repeats": 40, "reference_ms": 5.0, "fingerprint": fid})
    df = read_table(out)
    assert df["arch_id"].tolist() == ["a1", "a2"] and df["median_ms"].tolist() == [1.0, 2.0]
    with pytest.raises(TableError, match="before timings were scaled to a reference; measure into a new file"):
        measure_all([spec], out, runtime="torch", **ONE_THREAD, remeasure=0.0)


def test_remeasured_share_gets_a_second_row(tmp_path):
    out = tmp_path / "t.csv"
    measure_all(tiny_specs(3), out, runtime="torch", **ONE_THREAD, remeasure=1.0, sweeps=5)
    assert read_table(out)["arch_id"].value_counts().tolist() == [2, 2, 2]


def synthetic_rows(specs, factor=lambda i: 1.0):
    return [{"arch_id": s.arch_id, "spec_json": s.to_json(), "median_ms": synthetic_ms(s), "p10_ms": 0, "p90_ms": 0,
             "raw_median_ms": synthetic_ms(s) * factor(i), "repeats": 1, "reference_ms": 2.0, "fingerprint": "f",
             "fingerprint_json": json.dumps(fingerprint("cpu", "torch", 1, 1, s.img_size)),
             "flops": total_flops(s), "params": 1 + i % 7} for i, s in enumerate(specs)]


def test_fit_reports_the_raw_timings_beside_the_reference_ones():
    specs = tiny_specs(160, seed=3) + [sample(np.random.default_rng(4), img_size=16) for _ in range(60)]
    specs = list({s.arch_id: s for s in specs}.values())
    drift = np.random.default_rng(1).uniform(0.75, 1.35, len(specs))
    model, report = fit_and_report(pd.DataFrame(synthetic_rows(specs, lambda i: drift[i])), seed=0)
    assert report["within_5"] >= 0.95 and report["kendall_tau"] >= 0.95  # the steady timings are predictable
    assert report["raw"]["within_10"] < 0.8  # the raw ones drifted, and the report says so
    assert model.reference_ms == report["reference_ms"] == 2.0


def test_a_table_mixing_reference_speeds_cannot_be_fitted():
    specs = tiny_specs(30, seed=8)
    rows = synthetic_rows(specs)
    rows[0]["reference_ms"] = 3.0
    with pytest.raises(TableError, match="mixes rows of 2 reference speeds"):
        fit_and_report(pd.DataFrame(rows))


def test_learned_correction_is_kept_only_where_it_helps():
    specs = tiny_specs(120, seed=5) + [sample(np.random.default_rng(6), img_size=16) for _ in range(80)]
    noise = np.random.default_rng(0).lognormal(0.0, 0.05, len(specs))
    noisy = LatencyModel().fit(specs, np.array([synthetic_ms(s) for s in specs]) * noise)
    assert noisy.residual is None  # the kernel sum already explains everything but the noise
    assert noisy.residual_check["mape_with_trees"] >= noisy.residual_check["mape_stage1"]
    # a cost no kernel term can express: small models 40% slower (say, a cache effect)
    warped = np.array([synthetic_ms(s) * (1.4 if total_flops(s) < 2e6 else 1.0) for s in specs])
    assert LatencyModel().fit(specs, warped).residual is not None


def test_fit_recovers_a_known_function_and_beats_baselines():
    specs = tiny_specs(160, seed=3) + [sample(np.random.default_rng(4), img_size=16) for _ in range(60)]
    model, report = fit_and_report(pd.DataFrame(synthetic_rows(specs)).drop_duplicates("arch_id"), seed=0)
    assert report["within_5"] >= 0.95 and report["kendall_tau"] >= 0.95
    assert report["within_10"] >= report["baselines"]["params"]["within_10"]
    new = tiny_specs(20, seed=99)
    pred = model.predict(new)
    assert np.allclose(pred, [synthetic_ms(s) for s in new], rtol=0.05)


def test_a_spec_predicted_alone_gets_the_figure_it_gets_among_others():
    specs = tiny_specs(120, seed=5)
    model = LatencyModel().fit(specs[:80], np.array([synthetic_ms(s) for s in specs[:80]]))
    together = model.predict(specs)
    assert [model.predict([s])[0] for s in specs] == list(together)  # to the last bit


def test_predictor_scores_ten_thousand_specs_a_second():
    specs = tiny_specs(100)
    model = LatencyModel().fit(specs, np.array([synthetic_ms(s) for s in specs]))
    batch = [sample(np.random.default_rng(1), img_size=32) for _ in range(2000)]
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="outside the measured range"):
        model.predict(batch)
    assert len(batch) / (time.perf_counter() - start) > 2_000  # a loose floor; the benchmark measures it


def test_metrics_definitions():
    m = metrics(np.array([1.0, 2.15, 3.5]), np.array([1.0, 2.0, 3.0]))
    assert m["within_5"] == pytest.approx(1 / 3) and m["within_10"] == pytest.approx(2 / 3)
    assert m["mape"] == pytest.approx((0 + 0.075 + 1 / 6) / 3)


def test_save_load_round_trip_and_extrapolation_warning(tmp_path):
    specs = tiny_specs(40)
    model = LatencyModel(fingerprint={"cpu": "x"}).fit(specs, np.array([synthetic_ms(s) for s in specs]))
    model.save(tmp_path / "m.model")
    again = LatencyModel.load(tmp_path / "m.model")
    assert np.allclose(again.predict(specs[:5]), model.predict(specs[:5]))
    big = sample(np.random.default_rng(0), img_size=32)
    with pytest.warns(UserWarning, match="outside the measured range"):
        again.predict([big])
    assert set(again.terms(specs[0])) <= set(FEATURE_NAMES) | {"constant"}


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("a,b\n1,2\n", "lacks columns"),
    ("arch_id,spec_json,median_ms,p10_ms,p90_ms,repeats,fingerprint\nx,{},-1,0,0,1,f\n",
     "has 1 row"),
    ("arch_id,spec_json,median_ms,p10_ms,p90_ms,repeats,fingerprint\nx,{},inf,0,0,1,f\n",
     "whose median_ms is missing or not a finite positive number"),
    ("arch_id,spec_json,median_ms,p10_ms,p90_ms,repeats,fingerprint,flops\nx,{},1,0,0,1,f,xyz\n",
     "whose flops is missing or not a finite non-negative number"),
    ('arch_id,spec_json\n"unterminated,\n', "not a valid CSV"),
    ("arch_id,spec_json,median_ms,p10_ms,p90_ms,repeats,fingerprint\nx,{},1,1,1,1,f\n",
     "data row 1: spec must be a JSON object with a 'stages' list; remove the row or re-measure"),
])
def test_bad_tables_are_one_line_errors(tmp_path, content, message):
    f = tmp_path / "t.csv"
    f.write_text(content)
    with pytest.raises(TableError, match=message):
        read_table(f)
    one_line_error(run_cli("fit-latency", f, "--out", tmp_path / "m", check=False), message)


def test_a_row_cut_short_is_left_out_when_read_and_measured_again_when_appending(tmp_path):
    out = tmp_path / "t.csv"
    specs = tiny_specs(3)
    measure_all(specs[:2], out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5)
    first = read_table(out)["arch_id"].iloc[0]
    out.write_bytes(out.read_bytes()[:-30])  # the second row's write cut short, as a kill leaves it
    with pytest.warns(UserWarning, match="its last row was cut short .* and is left out"):
        assert read_table(out)["arch_id"].tolist() == [first]
    with pytest.warns(UserWarning, match="its last row was cut short .*; dropped, and its architecture measured again"):
        measure_all(specs, out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole again
        assert sorted(read_table(out)["arch_id"]) == sorted(s.arch_id for s in specs)
        out.write_bytes(out.read_bytes().rstrip())  # saved by an editor without a final line end: all kept
        assert len(read_table(out)) == 3
        measure_all(tiny_specs(4), out, runtime="torch", **ONE_THREAD, remeasure=0.0, sweeps=5)
        assert len(read_table(out)) == 4  # appended on a line of its own


def test_a_fit_report_is_strict_json_and_a_fit_keeps_enough_to_learn_from(tmp_path):
    table = tmp_path / "t.csv"
    specs = list({s.arch_id: s for s in tiny_specs(40, seed=2)}.values())
    pd.DataFrame(synthetic_rows(specs)).to_csv(table, index=False)  # no architecture timed twice: no noise floor
    report = json.loads(run_cli("fit-latency", table, "--out", tmp_path / "m.model", "--json").stdout,
                        parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert report["noise_pairs"] == 0 and "noise_floor" not in report
    assert "noise floor: none measured" in run_cli("fit-latency", table, "--out", tmp_path / "m.model").stdout
    one_line_error(run_cli("fit-latency", table, "--out", tmp_path / "n.model", "--test-fraction", 0.9, check=False),
                   f"{len(specs)} architectures measured, 4 left to fit on after holding out 0.9 of them; a fit "
                   f"needs at least 10")
    pd.DataFrame(synthetic_rows(specs)).drop(columns="fingerprint_json").to_csv(table, index=False)
    one_line_error(run_cli("fit-latency", table, "--out", tmp_path / "n.model", check=False),
                   f"timing table {table} lacks columns ['fingerprint_json'] that a fit needs")


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        LatencyModel.load(tmp_path / "none.model")
    (tmp_path / "bad.model").write_bytes(b"not a pickle")
    with pytest.raises(ModelFileError, match="unreadable"):
        LatencyModel.load(tmp_path / "bad.model")


def test_fingerprint_mismatch_is_named():
    model = LatencyModel(fingerprint={**fingerprint("cpu", "torch", 1, 1, 32), "cpu": "Some Other CPU"})
    problems = fingerprint_mismatch(model, 32)
    assert len(problems) == 1 and "Some Other CPU" in problems[0]
    assert fingerprint_mismatch(LatencyModel(fingerprint=fingerprint("cpu", "torch", 1, 1, 32)), 32) == []


def test_a_timing_protocol_with_warm_calls_has_a_fingerprint_of_its_own(monkeypatch):
    from latency_models import measure

    cold = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    monkeypatch.setattr(measure, "WARM_CALLS", 2)
    warm = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    assert warm == {**cold, "warm_calls": 2} and fingerprint_id(warm) != fingerprint_id(cold)
    assert fingerprint_mismatch(LatencyModel(fingerprint=cold), 8) == ["warm_calls None vs here 2"]


def test_run_refuses_a_foreign_latency_model_unless_forced(tmp_path):
    specs = tiny_specs(30)
    fp = {**fingerprint("cpu", "torch", 1, 1, 8), "cpu": "Another Machine"}
    LatencyModel(fingerprint=fp).fit(specs, np.array([synthetic_ms(s) for s in specs])).save(tmp_path / "m.model")
    res = run_cli("run", "--name", "r", "--target-ms", "5", "--latency-model", tmp_path / "m.model",
                  "--runs-dir", tmp_path, check=False, own_process=False)
    assert res.returncode == 2 and "measured elsewhere" in res.stderr and "--force" in res.stderr


def test_train_measures_on_the_predictors_scale_only_on_its_device():
    from nas.final import predictor_reference_ms

    here = fingerprint_id(fingerprint("cpu", "torch", 1, 1, 8))
    assert predictor_reference_ms({"latency_fingerprint": here, "latency_reference_ms": 4.2}, 8) == 4.2
    assert predictor_reference_ms({"latency_fingerprint": "a-jetson", "latency_reference_ms": 4.2}, 8) is None
    assert predictor_reference_ms({"target_ms": 3.0}, 8) is None  # a run from before references


def test_feature_matrix_shape_and_named_columns():
    assert feature_matrix(tiny_specs(3)).shape == (3, len(FEATURE_NAMES))
    stage = StageSpec(width=32, depth=2, heads=2)
    spec = ArchSpec(stages=(stage, StageSpec(width=32, depth=1, heads=2)), img_size=32, patch=8)  # grids 4, 2
    f = dict(zip(FEATURE_NAMES, feature_matrix([spec])[0]))
    deployed = deploy(build_model(spec))
    assert f["flops"] == count_flops(deployed)  # fvcore on the deployed model
    assert sum(f[f"{k}_flops"] for k in KINDS) == f["flops"]  # the per-kind columns hold FLOPs, not bytes
    assert f["linear_calls"] == sum(isinstance(m, torch.nn.Linear) for m in deployed.modules())  # each runs once
    assert f["copy_flops"] == 0 and f["copy_bytes"] > 0  # layout copies move bytes, compute nothing
    assert f["tokens"] == 16 * 2 + 4 * 1 and f["blocks"] == 3
    assert f["few_token_calls"] == tally(spec).few_token_calls > 0  # the 2x2 stage


def test_few_token_calls_count_the_launches_of_stages_of_at_most_four_tokens():
    stage = StageSpec(width=32, depth=2, heads=2)
    one = ArchSpec(stages=(stage,), img_size=32, patch=8)  # 4x4 = 16 tokens
    two = ArchSpec(stages=(stage, stage), img_size=32, patch=8)  # then 2x2 = 4 tokens
    assert tally(one).few_token_calls == 0
    assert tally(two).few_token_calls == sum(tally(two).calls) - sum(tally(one).calls) - 2  # minus the merge's norm and conv


def test_onnxruntime_runner_times_the_exported_model():
    from latency_models.measure import deployed_model, deployed_runner

    spec = tiny_specs(1)[0]
    runners = {rt: deployed_runner(spec, runtime=rt)[0] for rt in ("onnxruntime", "torch")}
    # what the onnxruntime runner runs is an onnxruntime session of the deployed model, on its seeded input
    model = deployed_model(spec, seed=0)
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    out = runners["onnxruntime"]()
    assert isinstance(out, list) and isinstance(out[0], np.ndarray)
    with torch.no_grad():
        assert np.allclose(out[0], model(x).numpy(), rtol=1e-4, atol=1e-5)
    stats = time_interleaved(runners, sweeps=30)["onnxruntime"]
    assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["repeats"] == 30


@pytest.mark.slow
def test_onnxruntime_tables_export_in_worker_processes(tmp_path):
    out = tmp_path / "ort.csv"
    spec = tiny_specs(1, seed=4)[0]
    assert measure_all([spec], out, runtime="onnxruntime", **ONE_THREAD, remeasure=0.0, sweeps=5) == 1
    row = read_table(out).iloc[0]
    assert row["arch_id"] == spec.arch_id and row["median_ms"] > 0 and row["repeats"] == 5
    assert json.loads(row["fingerprint_json"])["runtime"] == "onnxruntime"


def test_an_architecture_timed_twice_is_exported_once(tmp_path):
    class Exporter:  # the worker pool, in this process
        exported = []

        def map(self, fn, spec_jsons, paths):
            self.exported += list(paths)
            return map(fn, spec_jsons, paths)

    specs, exporter = tiny_specs(2, seed=4), Exporter()
    first = exported_files(exporter, specs, tmp_path)
    again = exported_files(exporter, specs[:1], tmp_path)
    assert len(exporter.exported) == 2 and again == {specs[0].arch_id: first[specs[0].arch_id]}
    largest_first = sorted(specs, key=lambda s: sum(tally(s, "onnxruntime").calls), reverse=True)
    assert exporter.exported == [first[s.arch_id] for s in largest_first]
    assert all(onnx.load(f).graph.node for f in first.values())


MEASURE_ALONE = """
import runpy, sys

for name in ("optuna", "ray", "fvcore", "sklearn", "scipy", "onnx", "onnxruntime"):
    sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError
sys.argv = ["search.py", *sys.argv[1:]]
runpy.run_path("search.py", run_name="__main__")
"""


@pytest.mark.slow
def test_measuring_needs_only_torch_and_the_project(tmp_path):
    """What an edge board or GPU server runs: no Optuna, Ray, fvcore, scipy or scikit-learn there."""
    specs = tmp_path / "s.jsonl"
    specs.write_text("".join(s.to_json() + "\n" for s in tiny_specs(2)))
    out = tmp_path / "t.csv"
    res = subprocess.run([sys.executable, "-c", MEASURE_ALONE, "measure", "--runtime", "torch", "--specs", specs, "--n", "0",
                          "--img-size", "8", "--in-chans", "1", "--remeasure", "0", "--sweeps", "5", "--out", out],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(read_table(out)) == 2 + 2 * len(presets(8, 1, 10))  # the specs and the presets at 2 scales


def test_a_search_with_a_cached_latency_model_does_not_import_scipy_or_sklearn():
    """They are for fitting a model; a search that reuses one would pay a second for them at each start."""
    code = ("import sys, nas.search, latency_models; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'sklearn'}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


def test_train_measures_on_the_predictors_scale_in_the_runs_target_runtime():
    from nas.final import predictor_reference_ms, target_runtime

    ort_here = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    cfg = {"latency_fingerprint": fingerprint_id(ort_here), "latency_reference_ms": 1.5, "latency_target": ort_here}
    assert target_runtime(cfg) == "onnxruntime" and predictor_reference_ms(cfg, 8) == 1.5
    assert predictor_reference_ms(cfg, 8, runtime="torch") is None  # an ONNX run's scale is not torch's
    assert target_runtime({"target_ms": 3.0}) == "torch"  # a run from before targets were recorded


def test_time_on_target_times_the_shipped_onnx_file_on_the_runs_scale(tmp_path):
    from nas.final import time_on_target
    from search_space.export import export_onnx

    deployed = deploy(build_model(tiny_specs(1)[0]))
    export_onnx(deployed, tmp_path / "model.onnx")
    ort_here = fingerprint("cpu", "onnxruntime", 1, 1, 8)
    cfg = {"latency_fingerprint": fingerprint_id(ort_here), "latency_reference_ms": 0.5, "latency_target": ort_here}
    timing = time_on_target(deployed, cfg, exported=tmp_path / "model.onnx", sweeps=20)
    assert timing["device"]["runtime"] == "onnxruntime" and timing["on_predictor_scale"]
    assert timing["reference_ms"] == 0.5 and 0 < timing["p10_ms"] <= timing["measured_ms"] <= timing["p90_ms"]
    torch_timing = time_on_target(deployed, cfg, runtime="torch", sweeps=20)
    assert torch_timing["device"]["runtime"] == "torch" and not torch_timing["on_predictor_scale"]


def test_calibration_cache_is_keyed_on_runtime_space_sample_presets_and_anchor(tmp_path, monkeypatch):
    import sys

    from latency_models.calibrate import cache_stem
    from latency_models.measure import specs_to_time

    def stem(space=TINY_SPACE, runtime="torch", n=150, seed=0):
        return cache_stem(specs_to_time(8, 1, 10, space, n=n, seed=seed), tmp_path, space, runtime=runtime)

    others = [stem(runtime="onnxruntime"), stem(space=SearchSpace()), stem(n=151), stem(seed=1)]
    before = stem()
    assert before == stem() and len({before, *others}) == 5
    monkeypatch.setattr(sys.modules["search_space.presets"], "MIN_PATCH", 1)  # other presets, and another anchor (DeiT-tiny)
    assert stem() not in {before, *others}


def test_onnxruntime_calibration_measures_that_runtime_and_is_reused(tmp_path, monkeypatch):
    """The plumbing from `calibrate` to the table and model (timing an exported graph is
    `test_onnxruntime_tables_export_in_worker_processes`)."""
    import latency_models.calibrate as calibration

    def measure_synthetic(specs, out, runtime, device, threads, batch, **_):
        fp = fingerprint(device, runtime, threads, batch, 8)
        for row in synthetic_rows(specs):
            append_row(out, {**row, "fingerprint": fingerprint_id(fp), "fingerprint_json": json.dumps(fp)})

    monkeypatch.setattr(calibration, "measure_all", measure_synthetic)
    path, report = calibration.calibrate(8, 1, 10, tmp_path, TINY_SPACE, runtime="onnxruntime", n=20)
    assert report["fingerprint"]["runtime"] == "onnxruntime" and report["fingerprint"]["onnxruntime"]
    assert LatencyModel.load(path).fingerprint["runtime"] == "onnxruntime"
    assert len(read_table(path.with_suffix(".csv"))) == len({s.arch_id for s in tiny_specs(20)}) + 6  # + presets
    assert calibration.calibrate(8, 1, 10, tmp_path, TINY_SPACE, runtime="onnxruntime", n=20) == (path, None)
    torch_path, _ = calibration.calibrate(8, 1, 10, tmp_path, TINY_SPACE, runtime="torch", n=20)
    assert torch_path != path and LatencyModel.load(torch_path).fingerprint["runtime"] == "torch"
