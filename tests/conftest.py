import numpy as np
import pytest
import torch

from nas.search import keep_ray_local

from .helpers import TARGET, TINY, made_once, other_device_ms, run_cli, synthetic_model

keep_ray_local()  # before any test imports Ray: the searches run in this process join a local one


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def two_target_run(tmp_path_factory):
    """One finished tiny search (TINY, 12 trials) with a second latency target, made once for the
    session: `runs/tiny`, its log in `run.log`, and the two models it used. The tests that read a
    finished run share it; the ones that change it work on a copy."""
    def search(folder):
        model = synthetic_model(folder / "digits.model")
        other = synthetic_model(folder / "other-device.model", device_ms=other_device_ms)
        log = run_cli("run", "--name", "tiny", "--target-ms", TARGET, "--trials", 12, "--latency-model", model,
                      "--latency-model", other, "--runs-dir", folder / "runs", *TINY, one_log=True).stdout
        (folder / "run.log").write_text(log)

    return made_once(tmp_path_factory, "two-target-run", search)
