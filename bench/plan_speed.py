"""How long ``lem campaign plan FILE --json`` takes on a grid of 100,000+ points (bench/grids/100k.yaml).

Three figures, each the median of ``--repeat`` runs (the machine may be shared, so the spread is printed too):
the whole command as a subprocess (interpreter start, imports, YAML, expansion and validation, JSON to a pipe);
``lem --help`` alone (the start-up and import cost every ``lem`` command pays before it does anything); and, in
this process, ``load_plan`` (read, expand, validate, hash) plus ``to_json``.

    .venv/bin/python bench/plan_speed.py                       # bench/grids/100k.yaml, 3 runs
    .venv/bin/python bench/plan_speed.py --grid other.yaml --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lem_shared.config.plan import load_plan

REPO = Path(__file__).resolve().parents[1]
LEM = Path(sys.executable).parent / "lem"


def timed(action) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def summary(label: str, seconds: list[float]) -> str:
    runs = ", ".join(f"{s:.2f}" for s in seconds)
    return f"{label:<48} median {statistics.median(seconds):5.2f} s   (runs: {runs})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(REPO / "bench/grids/100k.yaml"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    def command() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(LEM), "campaign", "plan", args.grid, "--json"], capture_output=True, check=True)

    def help_only() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(LEM), "--help"], capture_output=True, check=True)

    whole, start_up, in_process, to_json = [], [], [], []
    for _ in range(args.repeat):
        seconds, done = timed(command)
        whole.append(seconds)
        start_up.append(timed(help_only)[0])
        seconds, plan = timed(lambda: load_plan(args.grid))
        in_process.append(seconds)
        to_json.append(timed(plan.to_json)[0])
    printed = json.loads(done.stdout)
    points = len(printed["experiments"]) + len(printed["skipped"])
    reasons: dict[str, int] = {}
    for skipped in printed["skipped"]:
        kind = re.sub(r"\d+", "N", skipped["reason"])
        reasons[kind] = reasons.get(kind, 0) + 1

    print(
        f"grid {os.path.relpath(args.grid, REPO)}: {points:,} points -> {len(printed['experiments']):,} "
        f"experiments, {len(printed['skipped']):,} skipped; JSON {len(done.stdout) / 1e6:.1f} MB"
    )
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"  {count:>7,} skipped: {reason}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"Python {sys.version.split()[0]}"
    )
    print(summary("lem campaign plan --json (subprocess, total)", whole))
    print(summary("  of which start-up: lem --help", start_up))
    print(summary("load_plan in process (read, expand, validate)", in_process))
    print(summary("CampaignPlan.to_json in process", to_json))
    verdict = "meets" if statistics.median(in_process) <= 2.0 else "misses"
    print(
        f"expansion and validation {verdict} the <= 2 s target in process; the command as a whole takes "
        f"{statistics.median(whole):.2f} s, {statistics.median(start_up):.2f} s of it before planning starts"
    )


if __name__ == "__main__":
    main()
