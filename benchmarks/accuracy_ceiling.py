"""The most accurate models the 15-epoch reference recipe has trained on CIFAR-10, at any latency:
every committed long-reference, probe and proof training, so that a claim about how far above a
preset the space reaches at this recipe rests on all of them, not on one search.

    .venv/bin/python benchmarks/accuracy_ceiling.py [--above slab-deit --points 3] [--top 12]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.jobs import read_jsonl  # noqa: E402
from evaluators.recipes import FINAL_RECIPE  # noqa: E402
from evaluators.train import training_curve  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPOCHS = 15


def reference_trainings(results: Path = RESULTS) -> list[dict]:
    """The trainings at the reference's recipe, any seed (the pool and the probes that reuse its command)."""
    return [{"short": r["short"], "test_acc": r["test_acc"], "kind": r.get("origin", ""),
             "source": f"{path.parent.name} seed {r['seed']}"}
            for path in sorted(results.glob("*/reference.jsonl")) for r in read_jsonl(path)
            if training_curve(r["recipe"]) == training_curve({**FINAL_RECIPE, "epochs": EPOCHS, "seed": r["seed"]})]


def proof_trainings(results: Path = RESULTS) -> list[dict]:
    """The proof benchmark's finals at the 15-epoch recipe; a reused training is counted once, where it ran."""
    rows = []
    for path in sorted(results.glob("*/results.json")):
        res = json.loads(path.read_text())
        if res.get("budget", {}).get("final_epochs") != EPOCHS:
            continue
        rows += [{"short": r["short"], "test_acc": r["test_acc"], "kind": f"{r['kind']} {r['name']}",
                  "source": path.parent.name} for r in res["rows"]
                 if r["kind"] != "preset" and r.get("source", "trained") == "trained"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--above", default="slab-deit", help="the preset whose accuracy is the bar's base")
    parser.add_argument("--points", type=float, default=3.0, help="the bar: this many points above it")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the committed results folder")
    args = parser.parse_args(argv)
    rows = sorted(reference_trainings(args.results) + proof_trainings(args.results), key=lambda r: -r["test_acc"])
    base = preset_accuracy(args.above, args.results)
    bar = base + args.points / 100
    print(f"{len(rows)} trainings at {EPOCHS} epochs, {len({r['short'] for r in rows})} architectures; "
          f"{args.above} {base:.4f}, bar {bar:.4f}; above it: {sum(r['test_acc'] >= bar for r in rows)}")
    for r in rows[:args.top]:
        print(f"{r['test_acc']:.4f}  {r['source']:<24} {r['kind'][:28]:<28} {r['short']}")


def preset_accuracy(name: str, results: Path = RESULTS) -> float:
    """A preset's accuracy from the proof's results (its training is the reference's)."""
    res = json.loads((results / "cifar10" / "results.json").read_text())
    return next(r["test_acc"] for r in res["rows"] if r["name"] == name)


if __name__ == "__main__":
    main()
