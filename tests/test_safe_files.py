"""Files etnas writes that people share (latency models, checkpoints, trained models) load as data:
a crafted pickle runs nothing and gets one line."""
import os
import pickle

import numpy as np
import pytest
import torch

from evaluators.train import TrainConfig, train
from latency_models import LatencyModel, ModelFileError
from latency_models.calibrate import loads
from latency_models.features import FEATURE_NAMES, feature_matrix
from latency_models.measure import fingerprint
from search_space import ArchSpec, SearchSpace, StageSpec, sample

from .helpers import synthetic_ms


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def fitted_model(residual: bool) -> tuple[LatencyModel, list[ArchSpec]]:
    rng = np.random.default_rng(0)
    specs = [sample(rng, SearchSpace(), 16, 3, 10) for _ in range(60)]
    y = np.array([synthetic_ms(s) * (1.3 if s.patch == 2 else 1.0) for s in specs])
    model = LatencyModel(fingerprint=fingerprint("cpu", "torch", 1, 1, 16))
    model.fit(specs, y, residual=False)
    if residual:  # force the trees, whatever the inner check would decide
        model._fit_stages(feature_matrix(specs), y, 0, residual=True)
    return model, specs


@pytest.mark.parametrize("residual", [False, True])
def test_latency_model_round_trips_as_arrays(tmp_path, residual):
    model, specs = fitted_model(residual)
    model.save(tmp_path / "m.model")
    back = LatencyModel.load(tmp_path / "m.model")
    assert (back.residual is None) == (not residual)
    np.testing.assert_allclose(back.predict(specs), model.predict(specs), rtol=1e-12)
    assert back.fingerprint == model.fingerprint and back.ranges == model.ranges
    assert (tmp_path / "m.model").read_bytes()[:2] == b"PK"  # a zip of .npy arrays, not a pickle


@pytest.mark.parametrize("residual", [False, True])
def test_a_model_from_before_the_int8_features_still_predicts_on_the_features_it_knows(tmp_path, residual):
    rng = np.random.default_rng(0)
    specs = [sample(rng, SearchSpace(), 16, 3, 10) for _ in range(60)]
    older = LatencyModel(fingerprint=fingerprint("cpu", "torch", 1, 1, 16), n_features=len(FEATURE_NAMES) - 2)
    older.fit(specs, np.array([synthetic_ms(s) for s in specs]), residual=residual)
    older.save(tmp_path / "old.model")
    back = LatencyModel.load(tmp_path / "old.model")
    assert back.n_features == len(FEATURE_NAMES) - 2 and back.feature_matrix(specs).shape[1] == back.n_features
    np.testing.assert_allclose(back.predict(specs), older.predict(specs), rtol=1e-12)


def test_an_int8_model_from_before_int8_had_its_own_tally_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    specs = [sample(rng, SearchSpace(), 16, 3, 10) for _ in range(30)]
    older = LatencyModel(fingerprint=fingerprint("cpu", "onnxruntime", 1, 1, 16, "int8"), n_features=len(FEATURE_NAMES) - 2)
    older.fit(specs, np.array([synthetic_ms(s) for s in specs]), residual=False)
    older.save(tmp_path / "int8.model")
    with pytest.raises(ModelFileError, match="fitted before int8 had a kernel tally of its own; re-fit it"):
        LatencyModel.load(tmp_path / "int8.model")
    assert not loads(tmp_path / "int8.model")  # a cached calibration like it is re-fitted from its timings


def test_boosted_trees_predict_as_scikit_learn_does():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from latency_models.trees import TreeEnsemble

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 12))
    x[::17, 3] = np.nan  # missing values follow the learned side
    y = np.nan_to_num(x[:, 0]) * 2 + np.sin(np.nan_to_num(x[:, 3]))
    reg = HistGradientBoostingRegressor(max_iter=50, max_leaf_nodes=15).fit(x, y)
    probe = rng.normal(size=(500, 12))
    probe[::5, 3] = np.nan
    np.testing.assert_allclose(TreeEnsemble.from_sklearn(reg).predict(probe), reg.predict(probe), atol=1e-12)


def test_a_pickled_latency_model_runs_nothing_and_is_one_line(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.model"
    path.write_bytes(pickle.dumps({"version": 3, "model": Payload(marker)}))
    with pytest.raises(ModelFileError, match="old pickle format") as e:
        LatencyModel.load(path)
    assert not marker.exists() and "\n" not in str(e.value)


def test_a_crafted_checkpoint_runs_nothing_and_the_training_starts_over(tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": Payload(marker)}, ckpt)
    spec = ArchSpec((StageSpec(width=16, depth=1, heads=2, key_dim=8),), img_size=8, in_chans=1, patch=2)
    x, y = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8), torch.arange(32) % 10
    with pytest.warns(UserWarning, match="unreadable.*training from scratch"):
        res = train(spec, x, y, x, y, TrainConfig(epochs=1, batch_size=16), mean=[0.5], std=[0.25], checkpoint=ckpt)
    assert not marker.exists() and len(res.history) == 1
    assert (tmp_path / "ckpt.pt.corrupt").exists() and ckpt.exists()  # set aside, then a fresh checkpoint


def test_a_crafted_final_model_runs_nothing_and_is_one_line(tmp_path, monkeypatch):
    from nas import SearchError
    from nas import final

    marker = tmp_path / "ran"
    (tmp_path / "final" / "3").mkdir(parents=True)
    torch.save({"spec": Payload(marker)}, tmp_path / "final" / "3" / "model.pt")
    monkeypatch.setattr(final, "load_trial", lambda run, n: type("T", (), {"number": n})())
    with pytest.raises(SearchError, match="unreadable") as e:
        final.load_trained(tmp_path, 3)
    assert not marker.exists() and "\n" not in str(e.value)
