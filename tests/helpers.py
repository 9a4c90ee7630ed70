"""Shared test helpers: a latency model with a known true function, fitted in milliseconds."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from latency_models import LatencyModel
from latency_models.features import total_flops
from latency_models.measure import fingerprint
from search_space import SearchSpace, sample

ROOT = Path(__file__).resolve().parents[1]


def synthetic_ms(spec) -> float:
    """A known 'device': 0.3 ms fixed cost plus 1 ms per 10 MFLOPs."""
    return 0.3 + total_flops(spec) / 1e7


def other_device_ms(spec) -> float:
    """A second known 'device', slower per FLOP and with less fixed cost: it ranks differently."""
    return 0.05 + total_flops(spec) / 2e6


def synthetic_model(path: Path, img_size: int = 8, in_chans: int = 1, n: int = 80, device_ms=synthetic_ms) -> Path:
    rng = np.random.default_rng(0)
    specs = [sample(rng, SearchSpace(), img_size, in_chans, 10) for _ in range(n)]
    model = LatencyModel(fingerprint=fingerprint("cpu", "torch", 1, 1, img_size))
    model.fit(specs, np.array([device_ms(s) for s in specs]), residual=False)
    model.save(path)
    return path


def run_cli(*args, check=True, timeout=600, one_log=False):
    """`etnas ARGS` in a process of its own; one_log: stderr joins stdout, as `> log 2>&1` writes them."""
    res = subprocess.run([sys.executable, str(ROOT / "search.py"), *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if one_log else subprocess.PIPE, text=True, cwd=ROOT, timeout=timeout)
    if check:
        assert res.returncode == 0, (res.stderr or res.stdout)[-3000:]
    return res
