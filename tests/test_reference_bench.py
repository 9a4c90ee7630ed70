"""The reference benchmark's multi-fidelity scoring: it asks only for the trainings some promotion
rule needs, one rung at a time, and charges each rule for exactly what it trained."""
from benchmarks.reference import (RungSetting, compute_charged, multifidelity_scores, proxy_method, recall_ceiling,
                                  reseeded)
from nas.rungs import Rungs

RUNGS = RungSetting(Rungs(0.1, 1.3, 3))  # rungs at 0.1, 0.4 and 1.3 epochs, the search's recipe
POOL = [{"arch_id": f"a{i}", "pred_ms": float(i + 1)} for i in range(6)]


def row(arch, rung, acc, train_s, **cpu_s):
    return {"arch_id": arch, "rungs": RUNGS.tag, "rung": rung, "val_acc": acc, "train_s": train_s, **cpu_s}


def test_the_first_rung_is_asked_for_everyone_then_only_the_promoted():
    methods, missing = multifidelity_scores(POOL, [], RUNGS)
    assert methods == {} and missing == {(f"a{i}", 0) for i in range(6)}
    runs = [row(f"a{i}", 0, 0.1 * i, 10.0) for i in range(6)]
    _, missing = multifidelity_scores(POOL, runs, RUNGS)
    assert missing and {k for _, k in missing} == {1}
    assert {a for a, _ in missing} >= {"a5", "a4"}  # the accuracy rule's best 2 of 6


def test_each_rule_is_charged_for_what_it_trained_and_scored_by_rung_first():
    runs = [row(f"a{i}", 0, 0.1 * i, 10.0) for i in range(6)]
    runs += [row(f"a{i}", 1, 0.5 - 0.05 * i, 40.0) for i in range(6)]  # promoted ones invert at rung 1
    runs += [row(f"a{i}", 2, 0.6, 130.0) for i in range(6)]
    methods, missing = multifidelity_scores(POOL, runs, RUNGS)
    assert not missing
    assert set(methods) == {f"multifidelity-{r}-{RUNGS.tag}" for r in ("pareto", "bands", "accuracy")}
    acc = methods[f"multifidelity-accuracy-{RUNGS.tag}"]
    assert acc["rungs_reached"] == {"a0": 0, "a1": 0, "a2": 0, "a3": 0, "a4": 2, "a5": 1}
    # without CPU times: each one's wall time at its highest rung, which is cumulative
    assert (acc["compute_s"], acc["compute_of"]) == (4 * 10.0 + 40.0 + 130.0, "train_s")
    assert max(acc["scores"], key=acc["scores"].get) == "a4"


def test_cpu_seconds_are_summed_over_each_candidates_rungs():
    runs = [row(f"a{i}", 0, 0.1 * i, 10.0, cpu_s=8.0) for i in range(6)]
    runs += [row(f"a{i}", 1, 0.5 - 0.05 * i, 40.0, cpu_s=25.0) for i in range(6)]
    runs += [row(f"a{i}", 2, 0.6, 130.0, cpu_s=70.0) for i in range(6)]
    acc = multifidelity_scores(POOL, runs, RUNGS)[0][f"multifidelity-accuracy-{RUNGS.tag}"]
    # six first rungs, a4 and a5 at the second, a4 at the third: each process's own CPU time
    assert (acc["compute_s"], acc["compute_of"]) == (6 * 8.0 + 2 * 25.0 + 70.0, "cpu_s")


def test_compute_is_cpu_seconds_if_every_training_has_them_else_each_candidates_last_wall_time():
    trainings = [[{"train_s": 15.0, "cpu_s": 10.0}], [{"train_s": 6.0, "cpu_s": 4.0}, {"train_s": 20.0, "cpu_s": 11.0}]]
    assert compute_charged(trainings) == {"compute_s": 25.0, "compute_of": "cpu_s"}
    trainings.append([{"train_s": 7.0}])  # one row without CPU time: wall seconds throughout (cumulative)
    assert compute_charged(trainings) == {"compute_s": 42.0, "compute_of": "train_s"}


def test_a_proxy_re_run_supersedes_the_earlier_row_in_compute_and_score():
    runs = [{"arch_id": "a", "val_acc": 0.2, "train_s": 9.0},
            {"arch_id": "b", "val_acc": 0.4, "train_s": 6.0, "cpu_s": 4.0},
            {"arch_id": "a", "val_acc": 0.3, "train_s": 15.0, "cpu_s": 10.0}]  # a re-timed
    assert proxy_method(runs) == {"compute_s": 14.0, "compute_of": "cpu_s", "scores": {"a": 0.3, "b": 0.4}}


def test_second_seeds_go_to_the_architectures_quickest_per_epoch_of_their_first_training():
    pool = [{"arch_id": a} for a in "abcd"]
    rows = [{"arch_id": "a", "seed": 0, "epochs": 15, "train_s": 900.0},
            {"arch_id": "b", "seed": 0, "epochs": 15, "train_s": 300.0},
            {"arch_id": "c", "seed": 0, "epochs": 15, "train_s": 600.0},
            {"arch_id": "b", "seed": 1, "epochs": 15, "train_s": 10.0}]  # d unfinished; seed 1 rows ignored
    assert [r["arch_id"] for r in reseeded(pool, rows, 2)] == ["b", "c"]


def test_a_setting_other_than_the_search_s_is_its_own_ladder_and_round_trips_through_its_rows():
    other = RungSetting(RUNGS.rungs, resolution=16, recipe="final", seed=1)
    assert RUNGS.tag == "0.1x3-1.3ep" and other.tag == "0.1x3-1.3ep-16px-final-s1"
    assert RungSetting.of_row(other.record()) == other and RungSetting.of_row(RUNGS.record()) == RUNGS
    assert set(RUNGS.record()) == {"rungs", "first", "eta", "top_epochs"}  # the search's own: nothing more
    cfg = other.train_config()
    assert (cfg.batch_size, cfg.lr, cfg.seed, cfg.resolution) == (128, 1e-3, 1, 16)
    runs = [row(f"a{i}", 0, 0.1 * i, 10.0) for i in range(6)]  # the search's setting's rungs only
    methods, missing = multifidelity_scores(POOL, runs, other)
    assert methods == {} and missing == {(f"a{i}", 0) for i in range(6)}


def test_the_recall_ceiling_is_perfect_for_a_spread_pool_and_chance_for_a_flat_one():
    spread = {f"a{i}": 0.3 + 0.03 * i for i in range(20)}  # 3 points apart, splits of 100,000 images
    assert recall_ceiling(spread, 100_000, 100_000, 0.0, draws=200)["top5_recall_mean"] == 5.0
    flat = {f"a{i}": 0.6 for i in range(20)}  # nothing to rank: a random 5 of 20 finds 5 x 5/20 on average
    ceiling = recall_ceiling(flat, 2000, 5000, 0.0, draws=2000)
    assert 1.1 < ceiling["top5_recall_mean"] < 1.4 and ceiling["n_val"] == 2000
