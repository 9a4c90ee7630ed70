"""A real two-node Ray cluster on this machine (two loopback addresses, one CPU each, token auth):
a search joins it with --ray-address, trains on both nodes, and loses one mid-rung without losing a
training."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .helpers import ROOT, TARGET, TINY, read_only_query
from .test_search import check_run, promoted_in_training, study_trials

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")
HEAD, WORKER = "127.0.0.2", "127.0.0.3"  # Ray turns 127.0.0.1 into the machine's outward address on a cluster


def pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Cluster:
    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="etr", dir="/tmp"))  # Ray's socket paths must stay short
        with socket.socket() as s:
            try:
                s.bind((HEAD, 0))
            except OSError:
                pytest.skip(f"{HEAD} is not a loopback address here")
            self.port = s.getsockname()[1]
        self.address = f"{HEAD}:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}

    def start(self, *args: str) -> None:
        res = subprocess.run([str(RAY), "start", "--num-cpus", "1", "--disable-usage-stats", "--temp-dir",
                              str(self.temp), *args], env=self.env, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            self.stop()
            pytest.skip(f"ray start failed here: {res.stderr.strip().splitlines()[-1:]}")

    def raylet(self, ip: str) -> int:
        (pid,) = [p for p in pids_of(f"raylet/raylet.*--node_ip_address={ip}") if str(self.temp) in
                  Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        return pid

    def busy(self, ip: str) -> bool:
        """Whether the node's raylet has a worker running a training now."""
        return any(Path(f"/proc/{c}/cmdline").read_bytes().startswith(b"ray::evaluate_on_worker")
                   for c in children_of(self.raylet(ip)) if Path(f"/proc/{c}").exists())

    def stop(self) -> None:
        """This cluster's processes only (`ray stop` would stop every Ray on the machine)."""
        raylets = [p for p in pids_of("raylet/raylet") if str(self.temp) in
                   Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        kill_all([c for r in raylets for c in children_of(r)] + pids_of(str(self.temp)))


@pytest.fixture
def cluster():
    if not RAY.exists():
        pytest.skip("the ray command is not installed")
    c = Cluster()
    c.start("--head", "--node-ip-address", HEAD, "--port", str(c.port), "--include-dashboard=false")
    c.start("--address", c.address, "--node-ip-address", WORKER)
    yield c
    c.stop()


def finished_a_training_on(run_dir: Path, ip: str) -> bool:
    """Whether a rung trained on node `ip` is recorded."""
    rows = read_only_query(run_dir, "SELECT value_json FROM trial_user_attributes WHERE key = 'trained_on'")
    return any(ip in json.loads(value) for (value,) in rows)


def search_args(tmp_path, cluster, latency_model, trials):
    return [sys.executable, str(ROOT / "search.py"), "run", "--name", "c", "--target-ms", TARGET, "--trials",
            str(trials), "--latency-model", str(latency_model), "--runs-dir", str(tmp_path), "--ray-address",
            cluster.address, "--presets", "none", *TINY]


@pytest.fixture(scope="module")
def latency_model(tmp_path_factory):
    from .helpers import synthetic_model

    return synthetic_model(tmp_path_factory.mktemp("lat") / "digits.model")


def test_a_search_trains_on_both_nodes_and_loses_no_training_to_a_node_killed_mid_rung(tmp_path, cluster,
                                                                                        latency_model):
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(search_args(tmp_path, cluster, latency_model, 14), env=cluster.env, cwd=ROOT,
                                stdout=stderr, stderr=subprocess.STDOUT)
    run_dir, deadline = tmp_path / "c", time.time() + 400
    while time.time() < deadline and proc.poll() is None and not (
            promoted_in_training(run_dir) and cluster.busy(WORKER) and finished_a_training_on(run_dir, WORKER)):
        time.sleep(0.1)
    assert proc.poll() is None, log.read_text()[-3000:]
    raylet = cluster.raylet(WORKER)
    kill_all([raylet, *children_of(raylet)])  # the node is gone: its raylet and the workers it started
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    check_run(run_dir, 14, presets=())
    trials = study_trials(run_dir)
    relaunched = [t for t in trials if t.user_attrs.get("relaunches")]
    assert len(relaunched) == 1 and relaunched[0].state.name == "COMPLETE"
    # the wait saw a rung finished on the worker node: the head node's share is what this adds
    assert {ip for t in trials for ip in t.user_attrs.get("trained_on", [])} == {HEAD, WORKER}
    lines = log.read_text().splitlines()  # a line per event too, in a log
    (said,) = [line for line in lines if line.startswith("warning:") and "lost its worker" in line]
    assert said.startswith(f"warning: trial {relaunched[0].number} lost its worker at rung ")
    assert said.endswith("started again from its checkpoint") and f"on node {WORKER}" in said
    for t in trials:  # each rung recorded once, and no call trained more than its training needs
        a = t.user_attrs
        if a.get("trained_steps") and a.get("cached_from") is None:
            assert len(a["trained_steps"]) == len(a["started_at"]) == len(a["rung_accs"])
            assert sum(a["trained_steps"]) <= a["steps"]
            assert all(a["started_at"][r] >= a["started_at"][r - 1] + a["trained_steps"][r - 1]
                       for r in range(1, len(a["started_at"])))
    for t in relaunched:  # the lost rung went on from its checkpoint, on the node left
        assert t.user_attrs["trained_on"][-1] == HEAD
