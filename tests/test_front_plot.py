"""front.html draws what was measured: pruned trials at their last accuracy, never-trained trials in
their own marker row (not at accuracy 0), final trainings where they exist, labels apart."""
import json

import pandas as pd
import pytest

from nas.front import front_figure, place_labels
from nas.records import TRIAL_COLUMNS


def row(number, state, pred_ms, val_acc=None, history=None, preset=None, failure=None):
    r = dict.fromkeys(TRIAL_COLUMNS)
    r.update(number=number, state=state, pred_ms=pred_ms, val_acc=val_acc, preset=preset, failure=failure,
             short=f"arch{number}", history=json.dumps(history) if history else None)
    return r


TRIALS = pd.DataFrame([
    row(0, "COMPLETE", 2.0, 0.50, [0.4, 0.5], preset="deit-tiny"),
    row(1, "COMPLETE", 2.02, 0.501, [0.4, 0.501], preset="pre-rmsnorm"),  # near-tie with trial 0
    row(2, "PRUNED", 1.0, None, [0.30, 0.35]),
    row(3, "INFEASIBLE", 9.0),
    row(4, "FAIL", 1.5, failure="loss became nan"),
    row(5, "COMPLETE", 1.2, 0.45, [0.45]),
])
FRONT = [{"trial": 5, "val_acc": 0.45, "pred_ms": 1.2, "short": "arch5"},
         {"trial": 1, "val_acc": 0.501, "pred_ms": 2.02, "short": "arch1"}]
FINALS = {5: {"measured_ms": 1.3, "test_acc": 0.61, "epochs": 10}}


@pytest.fixture
def fig():
    return front_figure(TRIALS, FRONT, 3.0, FINALS)


def trace(fig, name):
    return next(t for t in fig.data if t.name.startswith(name))


def test_trials_are_drawn_at_the_rung_they_reached():
    trials = pd.DataFrame([
        {**row(0, "COMPLETE", 1.0, 0.6), "rung": 1, "rung_acc": 0.6},
        {**row(1, "COMPLETE", 2.0), "rung": 0, "rung_acc": 0.3},
        {**row(2, "COMPLETE", 1.5), "rung": 0, "rung_acc": 0.35},
    ])
    fig = front_figure(trials, [{"trial": 0, "val_acc": 0.6, "pred_ms": 1.0, "short": "arch0"}], 3.0, {})
    assert list(trace(fig, "rung 0").y) == [0.3, 0.35]
    top = trace(fig, "rung 1 (top")
    assert list(top.x) == [1.0] and list(top.y) == [0.6]


def test_a_run_from_before_rungs_draws_pruned_trials_at_their_last_accuracy(fig):
    pruned = trace(fig, "pruned")
    assert list(pruned.x) == [1.0] and list(pruned.y) == [0.35]


def test_never_trained_trials_are_a_marker_row_not_accuracy_zero(fig):
    for name in ("infeasible", "failed"):
        t = trace(fig, name)
        assert t.yaxis == "y2" and all(isinstance(v, str) for v in t.y)
    accuracy_traces = [t for t in fig.data if t.yaxis in (None, "y")]
    assert all(v > 0 for t in accuracy_traces for v in t.y)


def test_final_trainings_are_drawn(fig):
    final = trace(fig, "final training")
    assert list(final.x) == [1.3] and list(final.y) == [0.61]


def test_preset_labels_do_not_overlap_and_point_at_their_markers(fig):
    labels = {a.text: a for a in fig.layout.annotations if a.text in ("deit-tiny", "pre-rmsnorm")}
    (x0, y0), (x1, y1) = [(a.ax, a.ay) for a in labels.values()]
    x_span, y_span = 9.0, 0.501
    assert abs(x0 - x1) / x_span >= 0.12 or abs(y0 - y1) / y_span >= 0.05 - 1e-9
    presets = trace(fig, "seed presets")
    markers = {name: (x, y) for name, x, y in zip(presets.text, presets.x, presets.y)}
    for name, a in labels.items():
        assert a.showarrow and (a.x, a.y) == markers[name] and a.ay > a.y


def test_label_placement_moves_only_colliding_labels():
    assert place_labels([(1.0, 0.5), (5.0, 0.5)], 10, 1) == [0.0, 0.0]
    offsets = place_labels([(1.0, 0.5), (1.1, 0.5), (1.2, 0.5)], 10, 1)
    assert offsets[0] == 0 and 0 < offsets[1] < offsets[2]
