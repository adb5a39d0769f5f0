"""Window energy at its edges, against Zeus: the engine host's edge reads, Zeus's ZeusMonitor and telemetry's
interpolation over the same windows on a real GPU.

For each window length (1, 2, 5, 10 s) and load:
- ``step``: the GPU idle before and after, a bf16 matmul burn exactly inside the window (as a run's window is);
- ``steady``: another process keeps the GPU burning through the window and across both edges.
At each edge the device is synchronised, then Zeus's ``begin_window``/``end_window`` reads its counter and the
runtime's ``EdgeMeter`` (what ``MeasurementRuntime`` uses) reads its own, in the same order at both edges.
Telemetry (the daemon's ``NvmlSource`` + ``GpuSampler`` at the production 100 ms) samples all along, and
``lem_shared.measure.energy.window_energy`` interpolates its counter over the window, as the finaliser's
cross-check does.

    python3 bench/window_edges.py --out DIR          # DIR/window_edges.json and a table

Needs torch, nvidia-ml-py, psutil, pydantic and Zeus 0.16 (bench/bundles/services-h200.sh bundles it), with
bench/zeus_stand_in on the path (Zeus's monitor package imports scikit-learn's ``auc`` at import time):
``PYTHONPATH=shared:services/telemetry:.:bench/zeus_stand_in:$BUNDLE``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BURN = (
    "import sys, time, torch\n"
    "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
    "for _ in range(20): a @ a\n"
    "torch.cuda.synchronize()\n"
    "print('burning', flush=True)\n"
    "end = time.time() + float(sys.argv[1])\n"
    "while time.time() < end:\n"
    "    for _ in range(20): a @ a\n"
    "    torch.cuda.synchronize()\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.0, 2.0, 5.0, 10.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gap-s", type=float, default=3.0, help="idle between step windows")
    args = parser.parse_args()

    import torch
    from zeus.monitor import ZeusMonitor

    from bench.nvml_capture import Capture
    from lem_shared.measure.energy import edge_energy, power_integral, window_energy
    from lem_shared.runtime.edges import EdgeMeter, NvmlReader
    from lem_shared.wire.messages import WindowEdges

    args.out.mkdir(parents=True, exist_ok=True)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    capture = Capture(interval_s=0.1, energy_interval_s=0.1).start()
    uuid = capture.uuid
    meter = EdgeMeter(NvmlReader([uuid]), [uuid])
    zeus = ZeusMonitor(gpu_indices=[0])

    def burn(seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()

    windows: list[dict[str, Any]] = []

    def window(load: str, length: float, repeat: int, work: bool) -> None:
        torch.cuda.synchronize()
        zeus.begin_window("w", sync_execution=False)
        opened = meter.open_window()
        if work:
            burn(length)
        else:
            time.sleep(length)
        torch.cuda.synchronize()
        measured = zeus.end_window("w", sync_execution=False)
        closed = meter.close_window()
        ours, _ = edge_energy(WindowEdges(start=opened, end=closed).model_dump(mode="json"), uuid)
        windows.append(
            {
                "load": load,
                "length_s": length,
                "repeat": repeat,
                "start": opened.t,
                "end": closed.t,
                "zeus_j": measured.gpu_energy[0],
                "zeus_s": measured.time,
                "edges_j": ours,
                "read_ms": [round(opened.read_s * 1e3, 2), round(closed.read_s * 1e3, 2)],
            }
        )
        print(f"{load:6} {length:4.0f} s  zeus {measured.gpu_energy[0]:9.1f} J  edges {ours:9.1f} J", flush=True)

    burn(3.0)  # clocks and temperature up, as after a warm-up
    time.sleep(args.gap_s)
    for length in args.lengths:
        for repeat in range(args.repeats if length < 10 else max(2, args.repeats - 1)):
            window("step", length, repeat, work=True)
            time.sleep(args.gap_s)
    total = (
        sum(length * (args.repeats if length < 10 else max(2, args.repeats - 1)) + 0.5 for length in args.lengths) + 4
    )
    background = subprocess.Popen([sys.executable, "-c", BURN, str(total)], stdout=subprocess.PIPE, text=True)
    assert background.stdout is not None
    background.stdout.readline()  # CUDA up and burning: then 3 s for power and clocks to settle
    time.sleep(3.0)
    for length in args.lengths:
        for repeat in range(args.repeats if length < 10 else max(2, args.repeats - 1)):
            window("steady", length, repeat, work=False)
            time.sleep(0.5)
    background.wait(total + 30)
    time.sleep(2.0)  # telemetry past the last window's end
    capture.stop()
    samples = capture.samples()

    for w in windows:
        telemetry = window_energy(samples, w["start"], w["end"])
        w["telemetry_j"] = telemetry.energy_j
        for source in ("instant", "average"):
            w[f"integral_{source}_j"] = power_integral(samples, w["start"], w["end"], source)
        for key in ("edges_j", "telemetry_j", "integral_instant_j", "integral_average_j"):
            value = w[key]
            w[f"{key[:-2]}_vs_zeus_pct"] = 100 * (value - w["zeus_j"]) / w["zeus_j"] if value is not None else None

    summary = []
    for load in ("step", "steady"):
        for length in args.lengths:
            rows = [w for w in windows if w["load"] == load and w["length_s"] == length]
            row: dict[str, Any] = {
                "load": load,
                "length_s": length,
                "windows": len(rows),
                "zeus_j_mean": round(statistics.fmean(w["zeus_j"] for w in rows), 1),
            }
            for key in ("edges", "telemetry", "integral_instant", "integral_average"):
                values = [w[f"{key}_vs_zeus_pct"] for w in rows if w[f"{key}_vs_zeus_pct"] is not None]
                row[f"{key}_vs_zeus_pct"] = [round(min(values), 3), round(max(values), 3)] if values else None
            summary.append(row)
    reads = [ms for w in windows for ms in w["read_ms"]]
    result = {
        "gpu": uuid,
        "telemetry_interval_s": 0.1,
        "windows": windows,
        "summary": summary,
        "edge_read_ms": {"median": statistics.median(reads), "max": max(reads)},
        "telemetry_ticks": capture.ticks,
        "telemetry_missed": capture.missed,
    }
    (args.out / "window_edges.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| load | window | n | Zeus J (mean) | edge reads vs Zeus | telemetry interpolation vs Zeus "
        "| ∫P instant vs Zeus | ∫P average vs Zeus |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    fmt = lambda r: "n/a" if r is None else f"{r[0]:+.2f} … {r[1]:+.2f} %"  # noqa: E731
    for row in summary:
        print(
            f"| {row['load']} | {row['length_s']:g} s | {row['windows']} | {row['zeus_j_mean']} | "
            f"{fmt(row['edges_vs_zeus_pct'])} | {fmt(row['telemetry_vs_zeus_pct'])} | "
            f"{fmt(row['integral_instant_vs_zeus_pct'])} | {fmt(row['integral_average_vs_zeus_pct'])} |"
        )
    reads_ms = result["edge_read_ms"]
    print(f"edge read cost: median {reads_ms['median']:.2f} ms, max {reads_ms['max']:.2f} ms")


if __name__ == "__main__":
    main()
