"""How NVML's three power figures follow a step load on a real GPU: the energy counter, the instantaneous power
field and the ~1 s averaged power (``nvmlDeviceGetPowerUsage``), sampled by the telemetry daemon's own code at 10 ms.

The load runs in another process, loaded and warmed before sampling starts: idle, a bf16 matmul burn, idle,
transformers decoding a random-initialised Llama at batch 8, idle. Reported:

- each figure's update cadence (the spacing of its value changes);
- its step response at each edge of the load: lag to 10 % and the 10-90 % rise (or 90-10 % fall) time; the
  counter's power is its difference between successive updates;
- ∫P dt against the counter over 5 s and 10 s windows, with each power figure, for windows inside a steady
  phase and windows that contain a step;
- what one read of each power figure costs.

    python3 bench/power_response.py --out DIR         # DIR/power_response.json and the 10 ms trace (JSON lines)
    python3 bench/power_response.py --reanalyse DIR   # the analysis again, from DIR's trace and marks (no GPU)

Needs nvidia-ml-py, psutil, pydantic, torch and transformers:
``PYTHONPATH=shared:services/telemetry:services/worker-pytorch:.``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PHASES = (("idle", 6.0), ("burn", 12.0), ("idle", 10.0), ("decode", 12.0), ("idle", 8.0))


def load_main() -> None:
    """The load process: get ready, say so, then run each requested load for its seconds and report its span."""
    import torch

    from lem_shared.config.schema import ExperimentConfig
    from lem_worker_pytorch.adapter import TransformersAdapter

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    adapter = TransformersAdapter(device="cuda:0")
    experiment = ExperimentConfig.model_validate(
        {
            "model": "random:llama-1b",
            "backend": "pytorch",
            "batch_size": 8,
            "workload": {"kind": "synthetic", "input_len": 128, "output_len": 64, "num_prompts": 8},
        }
    )
    adapter.load(experiment)
    prompts = [[11 + (i * 7 + j) % 1000 for j in range(128)] for i in range(8)]
    for _ in range(3):
        adapter.generate(prompts, experiment)
        a @ a
    torch.cuda.synchronize()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        kind, seconds = line.split()
        torch.cuda.synchronize()
        start = time.time()
        while time.time() - start < float(seconds):
            if kind == "burn":
                for _ in range(20):
                    a @ a
                torch.cuda.synchronize()
            else:
                adapter.generate(prompts, experiment)
        torch.cuda.synchronize()
        print(json.dumps({"kind": kind, "start": start, "end": time.time()}), flush=True)


def _changes(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points where the value differs from the one before (the first point kept)."""
    out = points[:1]
    for t, v in points[1:]:
        if v != out[-1][1]:
            out.append((t, v))
    return out


def _series(readings: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    average = [(r["t"], r["power_mw"] / 1000) for r in readings if "power_mw" in r]
    instant = [(r["t"], r["power_instant_mw"] / 1000) for r in readings if "power_instant_mw" in r]
    counter = _changes([(r["t"], float(r["energy_mj"])) for r in readings if "energy_mj" in r])
    counter_power = [
        (t1, (e1 - e0) / (t1 - t0) / 1000) for (t0, e0), (t1, e1) in zip(counter, counter[1:], strict=False) if t1 > t0
    ]
    return {"counter": counter_power, "instant": instant, "average": average, "_counter_raw": counter}


def _cadence(points: list[tuple[float, float]]) -> dict[str, float] | None:
    changed = _changes(points)
    gaps = sorted(b[0] - a[0] for a, b in zip(changed, changed[1:], strict=False))
    if len(gaps) < 3:
        return None
    pick = lambda q: gaps[min(int(q * len(gaps)), len(gaps) - 1)]  # noqa: E731
    return {
        "median_ms": round(statistics.median(gaps) * 1e3, 1),
        "p10_ms": round(pick(0.1) * 1e3, 1),
        "p90_ms": round(pick(0.9) * 1e3, 1),
        "changes": len(changed),
    }


def _step(
    points: list[tuple[float, float]], t_step: float, before: tuple[float, float], after: tuple[float, float]
) -> dict[str, float] | None:
    """Lag to 10 % and 10-90 % transition time of ``points`` at a step at ``t_step`` (rising or falling)."""
    low = [v for t, v in points if before[0] <= t <= before[1]]
    high = [v for t, v in points if after[0] <= t <= after[1]]
    if not low or not high:
        return None
    v0, v1 = statistics.median(low), statistics.median(high)
    delta = v1 - v0
    if abs(delta) < 10:  # a step under 10 W is lost in the readings' own spread
        return None
    crossed: dict[float, float] = {}
    for fraction in (0.1, 0.9):
        level = v0 + fraction * delta
        for t, v in points:
            if t >= t_step and (v >= level if delta > 0 else v <= level):
                crossed[fraction] = t
                break
    if len(crossed) < 2:
        return None
    return {
        "from_w": round(v0, 1),
        "to_w": round(v1, 1),
        "lag_10pct_ms": round((crossed[0.1] - t_step) * 1e3, 1),
        "transition_10_90_ms": round((crossed[0.9] - crossed[0.1]) * 1e3, 1),
    }


def _windows(samples: list[Any], spans: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """∫P dt (instant, average) against telemetry's counter over sliding 5 s and 10 s windows every 0.5 s."""
    from lem_shared.measure.energy import counter_energy, power_integral

    edges = [edge for span in spans for edge in (span["start"], span["end"])]
    out: dict[str, Any] = {}
    for length in (5.0, 10.0):
        rows: dict[str, dict[str, list[float]]] = {
            "steady": {"instant": [], "average": []},
            "step": {"instant": [], "average": []},
        }
        start = t0
        while start + length <= t1:
            end = start + length
            counter, _, _ = counter_energy(samples, start, end)
            kind = "step" if any(start - 1.0 <= e <= end for e in edges) else "steady"
            if counter:
                for source in ("instant", "average"):
                    integral = power_integral(samples, start, end, source)
                    if integral is not None:
                        rows[kind][source].append(100 * (integral - counter) / counter)
            start += 0.5
        out[f"{length:g}s"] = {
            kind: {
                source: (
                    {
                        "windows": len(v),
                        "median_pct": round(statistics.median(v), 3),
                        "median_abs_pct": round(statistics.median(abs(x) for x in v), 3),
                        "max_abs_pct": round(max(abs(x) for x in v), 3),
                    }
                    if v
                    else None
                )
                for source, v in by_source.items()
            }
            for kind, by_source in rows.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--interval-s", type=float, default=0.01)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)  # the load process itself
    parser.add_argument("--reanalyse", type=Path, metavar="DIR", help="analyse DIR's recorded trace again")
    args = parser.parse_args()
    if args.load:
        load_main()
        return
    if args.reanalyse:
        reanalyse(args.reanalyse)
        return
    from bench.nvml_capture import Capture

    args.out.mkdir(parents=True, exist_ok=True)
    load = subprocess.Popen(
        [sys.executable, __file__, "--load"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert load.stdin is not None and load.stdout is not None
    if not json.loads(load.stdout.readline()).get("ready"):
        raise SystemExit("the load process did not get ready")
    capture = Capture(interval_s=args.interval_s, energy_interval_s=args.interval_s)
    costs = capture.source.measure_read_cost()
    costs["energy_counter"] = capture.source.measure_energy_read_cost()
    capture.start()
    began = time.time()
    spans: list[dict[str, Any]] = []
    for kind, seconds in PHASES:
        if kind == "idle":
            time.sleep(seconds)
            continue
        load.stdin.write(f"{kind} {seconds}\n")
        load.stdin.flush()
        spans.append(json.loads(load.stdout.readline()))
        print(f"{kind}: {spans[-1]['end'] - spans[-1]['start']:.2f} s", flush=True)
    capture.stop()
    load.stdin.close()
    load.wait(30)
    finished = time.time()

    records = capture.trace_records(t_min=began)
    with (args.out / "power_response_trace.jsonl").open("w") as out:
        for record in records:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    with (args.out / "power_response_marks.jsonl").open("w") as out:
        for span in spans:
            out.write(json.dumps({"name": span["kind"], "start": span["start"], "end": span["end"]}) + "\n")

    result = {
        "host": platform.node(),
        "gpu": capture.source.gpu_uuids[0],
        "interval_s": args.interval_s,
        "phases": [list(p) for p in PHASES],
        "spans": spans,
        "began": began,
        "finished": finished,
        "power_readings": capture.source.power_readings(),
        "read_cost_ms": {k: round(v * 1e3, 4) for k, v in costs.items()},
        "ticks": capture.ticks,
        "missed_ticks": capture.missed,
        **analyse(records, spans, began, finished),
    }
    (args.out / "power_response.json").write_text(json.dumps(result, indent=2) + "\n")
    report(result)


def reanalyse(folder: Path) -> None:
    """The analysis of a recorded run again, from its trace and marks (the run's own figures kept)."""
    result = json.loads((folder / "power_response.json").read_text())
    records = [json.loads(line) for line in (folder / "power_response_trace.jsonl").read_text().splitlines()]
    spans = [
        {"kind": m["name"], "start": m["start"], "end": m["end"]}
        for m in map(json.loads, (folder / "power_response_marks.jsonl").read_text().splitlines())
    ]
    began = result.get("began", records[0]["t"])
    finished = result.get("finished", records[-1]["t"])
    result.update(analyse(records, spans, began, finished))
    (folder / "power_response.json").write_text(json.dumps(result, indent=2) + "\n")
    report(result)


def report(result: dict[str, Any]) -> None:
    print(json.dumps({k: result[k] for k in ("read_cost_ms", "cadence", "power_readings")}, indent=1))
    for name, step in result["steps"].items():
        print(name, json.dumps(step))
    print(json.dumps(result["windows"], indent=1))


def analyse(
    records: list[dict[str, Any]], spans: list[dict[str, Any]], began: float, finished: float
) -> dict[str, Any]:
    """Cadences, step responses and window disagreements of a recorded trace."""
    from lem_shared.measure.energy import Sample

    series = _series(records)
    steps = {}
    for span in spans:
        s, e = span["start"], span["end"]
        for edge, t, before, after in (
            ("rise", s, (s - 4, s - 0.2), (s + 3, e - 0.2)),
            ("fall", e, (s + 3, e - 0.2), (e + 4, e + 6)),
        ):
            steps[f"{span['kind']}_{edge}"] = {
                name: _step(points, t, before, after) for name, points in series.items() if not name.startswith("_")
            }
    samples = [
        Sample(
            r["t"],
            r.get("energy_mj"),
            r["power_mw"] / 1000 if "power_mw" in r else None,
            r["power_instant_mw"] / 1000 if "power_instant_mw" in r else None,
        )
        for r in records
    ]
    return {
        "cadence": {
            name: _cadence(points)
            for name, points in (
                ("counter", series["_counter_raw"]),
                ("instant", series["instant"]),
                ("average", series["average"]),
            )
        },
        "steps": steps,
        "windows": _windows(samples, spans, began + 0.5, finished - 0.5),
    }


if __name__ == "__main__":
    main()
