"""Any square image side from 8 up (grey or RGB) searches: the presets and the space agree at every
size, and a search, a final training and an export run end to end at sizes that are not multiples
of 8 or 16."""
import json
import warnings

import numpy as np
import optuna
import pytest
import torch

from nas.config import SearchConfig
from nas.inputs import search_space_for
from search_space import build_model, deploy, sample
from search_space.presets import SEARCH_SCALE, preset, presets

from .helpers import run_cli, synthetic_model

SIZES = [8, 10, 20, 28, 30, 33, 34, 48, 50, 90, 96]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("chans", [1, 3])
def test_presets_are_trials_of_the_space_at_every_size(size, chans):
    shape = (size, chans, 10)
    space, params = search_space_for(SearchConfig(name="x", target_ms=1.0, latency_model=""), shape)
    study = optuna.create_study(directions=["maximize", "minimize"])
    refs = presets(*shape, width_mult=SEARCH_SCALE, depth_mult=SEARCH_SCALE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when an enqueued value is outside the choices
        for name, p in params.items():
            study.enqueue_trial(p)
            assert sample(study.ask(), space, *shape) == refs[name], name
    rng = np.random.default_rng(size)
    for spec in [sample(rng, space, *shape) for _ in range(4)] + [refs["efficientvit-m0"]]:
        model = build_model(spec).eval()
        x = torch.randn(2, chans, size, size)
        assert torch.allclose(model(x), deploy(model)(x), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("size, chans", [(28, 1), (96, 3)])
def test_search_train_and_export_at_sizes_off_the_power_of_two_grid(tmp_path, size, chans):
    rng = np.random.default_rng(0)
    shape = (60, size, size) if chans == 1 else (60, size, size, chans)
    np.savez(tmp_path / "data.npz", x_train=rng.integers(0, 256, shape, dtype=np.uint8), y_train=np.arange(60) % 3,
             x_test=rng.integers(0, 256, shape, dtype=np.uint8)[:12], y_test=np.arange(12) % 3)
    model = synthetic_model(tmp_path / "lat.model", img_size=size, in_chans=chans, n=60)
    run_cli("run", "--name", "s", "--runs-dir", tmp_path / "runs", "--dataset", f"npz:{tmp_path / 'data.npz'}",
            "--latency-model", model, "--target-ms", "p90", "--trials", 4, "--presets", "none", "--epochs", 0.2,
            "--workers", 1)
    run = tmp_path / "runs" / "s"
    assert json.loads((run / "front.json").read_text())
    run_cli("train", run, "--trial", "best", "--epochs", 0.2)
    run_cli("export", run, "--trial", "best", "--out", tmp_path / "export")
    assert (tmp_path / "export" / "model.onnx").stat().st_size > 0
    assert preset("deit-tiny", size, chans, 3).patch == {28: 4, 96: 8}[size]
