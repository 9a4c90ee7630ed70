"""Benchmark: how long a user waits for the one-line error of a mistyped command (issue 30 asks
under 1 s): each bad command run as a whole process `--repeats` times, its median wall time, exit
status and message. The commands are checked before any heavy import (torch, Ray).

    .venv/bin/python benchmarks/error_latency.py [--repeats 5] [--out benchmarks/results/error_latency.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bad_commands(scratch: Path) -> dict[str, list[str]]:
    """One mistake of each kind a user makes, by what it gets wrong."""
    missing = str(scratch / "no-such-run")
    return {
        "unknown option": ["run", "--name", "x", "--target-ms", "5", "--trails", "30"],
        "out-of-range count": ["run", "--name", "x", "--target-ms", "5", "--trials", "3"],
        "bad target": ["run", "--name", "x", "--target-ms", "fast"],
        "missing dataset file": ["run", "--name", "x", "--target-ms", "5", "--dataset", "npz:" + str(scratch / "x.npz")],
        "unknown dataset": ["run", "--name", "x", "--target-ms", "5", "--dataset", "cifar"],
        "train: no such run": ["train", missing, "--trial", "best"],
        "train: bad epochs": ["train", missing, "--trial", "0", "--epochs", "-1"],
        "export: unknown format": ["export", missing, "--trial", "0", "--out", str(scratch / "o"), "--format", "tflite"],
        "export: no such run": ["export", missing, "--trial", "0", "--out", str(scratch / "o")],
        "front: no such run": ["front", missing],
        "dashboard: no such run": ["dashboard", missing],
        "measure: bad count": ["measure", "--out", str(scratch / "t.csv"), "--n", "-3"],
    }


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "search.py"), *args], capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - start, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "error_latency.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        commands = bad_commands(Path(scratch))
        for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits every command alike
            for what, cmd in commands.items():
                seconds, res = timed(cmd)
                rows.append({"what": what, "seconds": seconds, "status": res.returncode,
                             "stderr": res.stderr.strip().replace(scratch, "SCRATCH")})
    results = []
    for what, cmd in commands.items():
        mine = [r for r in rows if r["what"] == what]
        lines = mine[0]["stderr"].splitlines()
        results.append({"what": what, "command": "etnas " + " ".join(cmd).replace(scratch, "SCRATCH"),
                        "median_s": statistics.median(r["seconds"] for r in mine),
                        "max_s": max(r["seconds"] for r in mine), "status": sorted({r["status"] for r in mine}),
                        "one_line": len(lines) == 1 and lines[0].startswith("error:"), "message": mine[0]["stderr"]})
        r = results[-1]
        print(f"{r['median_s']:5.2f} s (max {r['max_s']:.2f})  exit {r['status']}  {what}: {r['message'][:110]}")
    print(f"slowest median {max(r['median_s'] for r in results):.2f} s; all one line, exit 2: "
          f"{all(r['one_line'] and r['status'] == [2] for r in results)}")
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "python": sys.version.split()[0],
                                          "results": results}, indent=1))


if __name__ == "__main__":
    main()
