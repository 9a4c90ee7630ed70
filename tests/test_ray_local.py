"""A local search's Ray listens on loopback only and serves no dashboard (Linux: read from /proc)."""
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.jobs import descendants

from .helpers import ROOT

SCRIPT = """
import json
from nas.config import SearchConfig
from nas.search import start_ray
ray = start_ray(SearchConfig(name="x", target_ms=1.0, latency_model="", workers=1))
ray.get(ray.remote(lambda: 1).remote())
print(json.dumps(ray.util.get_node_ip_address()))
input()  # hold Ray up while the test reads the sockets
"""


def listening_sockets() -> dict[str, str]:
    """Socket inode -> local address:port (hex, as /proc/net/tcp writes it) of every listening TCP socket."""
    out = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                out[fields[9]] = fields[1]
    return out


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


DASHBOARD_PORT = 8265
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_local_ray_listens_on_loopback_only():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == '"127.0.0.1"'
        listening = listening_sockets()
        bound = [listening[i].split(":") for p in {proc.pid, *descendants(proc.pid)} for i in socket_inodes(p) if i in listening]
        assert len(bound) >= 3  # the GCS, the raylet and a worker at least
        assert {address for address, _ in bound} <= LOOPBACK, bound
        assert DASHBOARD_PORT not in {int(port, 16) for _, port in bound}
    finally:
        proc.communicate("\n", timeout=120)
