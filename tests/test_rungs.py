"""Multi-fidelity rungs: budgets, and promotion rules that keep slow candidates in the race."""
import pytest

from nas.rungs import (RungResult, Rungs, expected_epochs, latency_bands, pareto_order, promoted, rung_score,
                       search_band_edges, successive_halving)


def test_budgets_grow_eta_fold_and_end_at_the_top():
    rungs = Rungs(base_epochs=0.1, top_epochs=4.0, eta=3)
    assert rungs.count == 4 and rungs.budgets == pytest.approx([0.1, 0.4, 1.3, 4.0])
    assert Rungs(0.3, 4.0, 3).budgets[-1] == pytest.approx(4.0) and Rungs(0.3, 4.0, 3).count == 3
    assert Rungs(2.0, 2.0).budgets == [2.0]
    with pytest.raises(ValueError, match="base"):
        Rungs(5.0, 1.0)


def test_a_candidate_trains_each_rungs_epochs_at_the_chance_it_is_promoted_there():
    rungs = Rungs(base_epochs=0.1, top_epochs=4.0, eta=3)  # rung k adds 0.1, 0.3, 0.9, 2.7 epochs
    assert expected_epochs(rungs) == pytest.approx(0.1 + 0.3 / 3 + 0.9 / 9 + 2.7 / 27)
    assert expected_epochs(rungs, from_rung=2) == pytest.approx(0.9 + 2.7 / 3)
    assert expected_epochs(rungs, from_rung=3) == pytest.approx(2.7)
    assert expected_epochs(Rungs(2.0, 2.0)) == pytest.approx(2.0)  # one rung: every candidate trains it all


def test_the_rungs_are_said_with_the_base_they_settled_on():
    assert Rungs(0.5, 6.5, 3).said() == "rungs at 0.5, 2, 6.5 epochs"
    assert Rungs(0.25, 1.0, 2).said() == ("rungs at 0.333, 1 epochs (--base-epochs 0.25 moved to 0.333: the nearest "
                                          "base whose rungs, each adding 2 times the epochs of the one before, end at "
                                          "--epochs 1)")
    assert Rungs(1.0, 1.0).said() == "one rung of 1 epochs (no promotions)"


def field(n=9):
    """Accuracy grows with latency: the fast third converges best early but is least accurate."""
    return [RungResult(f"m{i}", accuracy=0.3 + 0.05 * i, latency_ms=1.0 + i) for i in range(n)] + [
        RungResult("fast", accuracy=0.9, latency_ms=0.5), RungResult("fast2", accuracy=0.85, latency_ms=0.6)]


def test_accuracy_rule_promotes_the_best_third_whatever_their_latency():
    results = field()
    assert promoted(results, "accuracy", eta=3, settled=True) == {"fast", "fast2", "m8", "m7"}


def test_bands_promote_within_each_latency_band():
    results = field()
    bands = latency_bands(results)
    assert [len(b) for b in bands] == [4, 4, 3] and bands[0][0].key == "fast"
    assert [len(b) for b in latency_bands(results, edges=[2.5, 100])] == [4, 7]
    assert promoted(results, "bands", eta=3, settled=True) == {"fast", "fast2", "m4", "m5", "m8"}


def test_while_results_arrive_a_candidate_clearly_beaten_by_a_faster_one_stops_even_alone_in_its_band():
    rung = [RungResult("convnet", 0.41, 2.0), RungResult("near", 0.40, 2.2), RungResult("deep", 0.28, 3.1)]
    edges = [2.1, 3.0]  # each alone in its band: each the best so far of its band
    # the rung's accuracies deviate by 0.059: deep trails the faster convnet by 0.13, near by 0.01 only
    assert promoted(rung, "bands", eta=3, band_edges=edges) == {"convnet", "near"}
    assert promoted(rung, "bands", eta=3, band_edges=edges, settled=True) == {"convnet", "near", "deep"}
    assert promoted(rung[::2], "bands", eta=3, band_edges=edges) == {"convnet", "deep"}  # two results: no spread yet
    slower_but_best = rung + [RungResult("deep2", 0.45, 3.2)]
    assert promoted(slower_but_best, "bands", eta=3, band_edges=edges) == {"convnet", "near", "deep2"}


def test_pareto_order_takes_fronts_in_turn_ends_first():
    results = [RungResult("a", 0.9, 1.0), RungResult("b", 0.8, 0.5), RungResult("c", 0.95, 3.0),
               RungResult("d", 0.85, 2.0), RungResult("e", 0.5, 4.0)]
    order = [r.key for r in pareto_order(results)]
    assert set(order[:3]) == {"a", "b", "c"} and order[:2] == ["c", "b"]  # the front's ends, most accurate first
    assert order[3:] == ["d", "e"]  # d is dominated by a only, e by everything
    assert promoted(results, "pareto", eta=3, settled=True) == {"b", "c"}


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="unknown promotion rule 'best'"):
        promoted(field(), "best", eta=3)


def test_successive_halving_trains_each_promoted_candidate_once_per_rung():
    latency = {f"m{i}": 1.0 + i for i in range(9)}
    calls = []

    def accuracy_at(key, rung):
        calls.append((key, rung))
        return 0.1 * int(key[1:]) / (1 + rung)

    reached = successive_halving(latency, accuracy_at, Rungs(1, 13, 3), "accuracy")
    assert len(calls) == len(set(calls)) == 9 + 3 + 1
    assert [k for k, accs in reached.items() if len(accs) == 3] == ["m8"]
    assert sorted(k for k, accs in reached.items() if len(accs) >= 2) == ["m6", "m7", "m8"]
    scores = {k: rung_score(a) for k, a in reached.items()}
    assert max(scores, key=scores.get) == "m8" and scores["m7"] > scores["m5"]


def test_while_results_arrive_the_best_so_far_goes_on():
    first = [RungResult("a", 0.2, 1.0)]
    assert promoted(first, "accuracy", eta=3) == promoted(first, "pareto", eta=3) == {"a"}
    two = first + [RungResult("b", 0.3, 5.0)]
    assert promoted(two, "accuracy", eta=3) == {"b"}
    assert promoted(two, "bands", eta=3, band_edges=[2.0]) == {"a", "b"}  # alone in its latency band


def test_rung_agreement_is_kendall_tau_per_rung_pair_over_the_trials_trained_at_both():
    import json

    from nas.records import rung_agreement

    def row(accs, state="COMPLETE"):
        return {"rung_accs": json.dumps(accs), "state": state}

    rows = [row([0.1, 0.5, 0.9]), row([0.2, 0.4, 0.8]), row([0.3, 0.6]), row([0.4, 0.7]), row([0.05]),
            row([0.9, 0.1, 0.1], state="DUPLICATE")]  # a duplicate repeats its original: not counted
    agreement = rung_agreement(rows)
    # rung 0->1 over 4 trials: pairs (.1,.5) (.2,.4) (.3,.6) (.4,.7): 5 concordant, 1 discordant
    assert agreement[0] == {"rungs": "0->1", "trials": 4, "kendall_tau": round(4 / 6, 4)}
    assert agreement[1] == {"rungs": "1->2", "trials": 2, "kendall_tau": None}  # fewer than 3 pairs
    interrupted = {**row([0.35, 0.1]), "arch_id": "a1", "state": "FAIL"}  # stopped at rung 2, queued again
    queued_again = {**row([0.35, 0.1, 0.2]), "arch_id": "a1"}  # one architecture: counted once, as it went on
    assert rung_agreement([*rows, interrupted, queued_again])[0]["trials"] == 5
    assert rung_agreement([*rows, queued_again])[1]["trials"] == 3


def test_search_bands_split_fastest_to_target_evenly_in_log_latency():
    edges = search_band_edges(0.25, 4.0, count=4)
    assert edges == pytest.approx([0.5, 1.0, 2.0])  # each band spans the same latency ratio, 2x here
    results = [RungResult("fast", 0.30, 0.3), *(RungResult(f"m{i}", 0.5 + i / 100, 0.6 + i / 10) for i in range(4)),
               RungResult("slow", 0.55, 1.5)]
    assert promoted(results, "bands", eta=3, band_edges=edges) == {"fast", "m3", "slow"}  # the fast end has its band
    assert "fast" not in promoted(results, "bands", eta=3)  # bands of equal count: the fastest loses to m0
    assert search_band_edges(2.0, 2.0) == [] and search_band_edges(3.0, 2.0) == []  # no room under the target
