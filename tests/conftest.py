from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import TARGET, TINY, made_once, other_device_ms, run_cli, synthetic_model


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



# The modules whose tests run whole searches, costliest first (BENCHMARKS.md, "Main job end to end").
SEARCHING_MODULES = ("test_benchmarks", "test_export", "test_sizes", "test_rundir", "test_search", "test_disk",
                     "test_cluster")


def pytest_collection_modifyitems(items):
    """The searching modules first, costliest first, then the other slow ones: `make test` hands
    modules to xdist's workers in this order (--no-loadscope-reorder), so the long searches start
    at once instead of one of them running alone at the end of the suite."""
    def module(item) -> str:
        return Path(item.nodeid.split("::")[0]).stem

    slow = {module(item) for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        name = module(item)
        return SEARCHING_MODULES.index(name) if name in SEARCHING_MODULES else len(SEARCHING_MODULES) + (name not in slow)

    items.sort(key=rank)
