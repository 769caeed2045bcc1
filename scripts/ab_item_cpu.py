"""Item CPU of two revisions side by side, in one run: before/after figures for a change.

The bench's item figure (`station.bench.bench_item_cpu`: station CPU per item, the virtual key's
own time excluded, next to the crypto floor measured in the same process) is taken for the tree
at REV (extracted with `git archive` into a temporary folder, nothing in the repository changes)
and for the working tree, in alternating subprocesses (ABBA order), so that both see the same load on a shared machine.
Prints the median of each figure and the median of the rounds' after/before ratios; the virtual
key's own CPU (the same code on both sides) shows how even the load was.

    .venv/bin/python scripts/ab_item_cpu.py [--base REV] [--rounds 5] [--items 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_CHILD = ("import json, sys; sys.path.insert(0, sys.argv[1]); from station.bench import bench_item_cpu; "
          "print(json.dumps(bench_item_cpu(items=int(sys.argv[2]))))")
FIGURES = ("station_cpu_ms", "with_key_cpu_ms", "authenticator_cpu_ms", "floor_ms", "ratio", "getinfo_per_item")


def _extract(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _one(tree: Path, items: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), str(items)], cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="the 'before' revision (default: main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="ab-item-cpu-") as tmp:
        base = Path(tmp)
        _extract(args.base, base)
        for round_ in range(args.rounds):  # ABBA: neither side always runs first
            order = [("before", base), ("after", ROOT)]
            for side, tree in (order if round_ % 2 == 0 else order[::-1]):
                runs[side].append(_one(tree, args.items))
    medians = {side: {f: statistics.median(x[f] for x in rs) for f in FIGURES if all(f in x for x in rs)}
               for side, rs in runs.items()}
    paired = [a["station_cpu_ms"] / b["station_cpu_ms"] for a, b in zip(runs["after"], runs["before"])]
    result = {"base": args.base, "after_over_before_per_round": sorted(round(p, 3) for p in paired),
              "after_over_before_median": statistics.median(paired), "rounds": args.rounds, "items": args.items, "median": medians,
              "station_cpu_ms_runs": {s: [round(x["station_cpu_ms"], 2) for x in rs] for s, rs in runs.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"item CPU, {args.rounds} alternating rounds of {args.items} items, medians (before = {args.base})")
    for figure in FIGURES:
        if figure in medians["before"] and figure in medians["after"]:
            b, a = medians["before"][figure], medians["after"][figure]
            print(f"  {figure:<22} before {b:8.2f}   after {a:8.2f}   after/before {a / b if b else float('nan'):5.2f}")
    print(f"  station_cpu_ms after/before, median of the rounds' ratios: {result['after_over_before_median']:.2f} "
          f"(rounds: {result['after_over_before_per_round']})")
    for side, values in result["station_cpu_ms_runs"].items():
        print(f"  station_cpu_ms runs {side}: {values}")


if __name__ == "__main__":
    main()
