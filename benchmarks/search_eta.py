"""Benchmark: how close the search's live ETA comes to the time the search really had left. Runs
one search through `etnas.search`, records the ETA of every progress event beside the seconds the
search then still took, and prints the ratio (ETA / time left) by quarter of the run.

    .venv/bin/python benchmarks/search_eta.py --latency-model runs/latency/auto-....model \
        --out benchmarks/results/search_eta/demo.json -- --epochs 3 --workers 2

Arguments after `--` are `SearchConfig` fields as `--name value` (integers and floats parsed);
the defaults are the demo's search (digits, `--epochs 3`, 30 trials, 2 workers).
"""
import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import etnas


def settings_from(extra: list[str]) -> dict:
    """`--epochs 3 --workers 2` as {"epochs": 3.0, "workers": 2}."""
    def parsed(text: str):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text
    return {name.removeprefix("--").replace("-", "_"): parsed(value) for name, value in zip(extra[::2], extra[1::2])}


def timed_search(latency_model: str, settings: dict) -> tuple[list[tuple[float, float | None]], float]:
    """[(seconds since the search began, ETA in seconds or None)] per progress event, and the
    search's whole duration."""
    events: list[tuple[float, float | None]] = []
    with tempfile.TemporaryDirectory() as runs:
        started = time.monotonic()
        etnas.search("digits", "p50", name="eta", runs_dir=runs, latency_model=latency_model,
                     on_progress=lambda p: events.append((time.monotonic() - started, p.training_s_left)),
                     **{"epochs": 3.0, "trials": 30, "workers": 2, **settings})
        return events, time.monotonic() - started


def by_quarter(events: list[tuple[float, float | None]], total_s: float) -> list[dict]:
    """The median ratio of ETA to the time really left, per quarter of the run (events with an ETA)."""
    out = []
    for quarter in range(4):
        ratios = [eta / (total_s - t) for t, eta in events
                  if eta is not None and quarter <= 4 * t / total_s < quarter + 1 and total_s - t > 1.0]
        out.append({"quarter": quarter + 1, "events": len(ratios),
                    "median_eta_over_left": round(statistics.median(ratios), 3) if ratios else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-model", required=True, help="a latency model for digits (8x8, 1 channel)")
    parser.add_argument("--out", required=True, help="JSON file to write the figures to")
    parser.add_argument("settings", nargs="*", help="SearchConfig fields after --, as --name value")
    args = parser.parse_args()
    settings = settings_from(args.settings)
    events, total_s = timed_search(args.latency_model, settings)
    quarters = by_quarter(events, total_s)
    result = {"machine": platform.processor() or platform.machine(), "settings": settings,
              "search_s": round(total_s, 1), "quarters": quarters,
              "events": [{"t_s": round(t, 2), "eta_s": None if eta is None else round(eta, 2)} for t, eta in events]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"search took {total_s:.1f} s over {len(events)} progress events")
    for q in quarters:
        print(f"quarter {q['quarter']}: median ETA / time left {q['median_eta_over_left']} over {q['events']} events")


if __name__ == "__main__":
    main()
