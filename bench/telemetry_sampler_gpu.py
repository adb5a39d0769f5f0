"""Telemetry sampling at 10 ms on a real GPU: does the energy counter (~4 ms a read) starve the loop?

Runs the daemon's own ``NvmlSource`` and ``GpuSampler`` (no database, no Redis) in three phases:

- ``threaded``: the daemon's design on this host's GPUs: cheap fields every 10 ms, the counter in a thread per
  GPU every 100 ms; a bf16 matmul load runs in another process through the middle of it;
- ``threaded_x8``: the same with the first GPU presented 8 times (8 fast reads a tick, 8 counter threads),
  standing in for an 8-GPU host;
- ``inline_x8``: the old design for comparison: the 8 counter reads inside each 10 ms tick.

For each phase: ticks run and missed, the time one tick's reads take (p50/p99/max), fast rows and counter
rows per GPU, the spacing of counter rows, and how often successive counter reads differed.

    python3 bench/telemetry_sampler_gpu.py --out telemetry_sampler_h200.json

Needs only nvidia-ml-py and psutil (and torch for the load): ``PYTHONPATH=services/telemetry``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lem_telemetry.sampler import GpuSampler, run_on_schedule
from lem_telemetry.sources import GpuReading, NvmlSource

LOAD = (
    "import time, torch\n"
    "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
    "end = time.time() + {seconds}\n"
    "while time.time() < end:\n"
    "    for _ in range(20): a @ a\n"
    "    torch.cuda.synchronize()\n"
)


class Replicated:
    """One GPU of ``source`` presented ``n`` times (as an n-GPU host would be read); every read is real."""

    def __init__(self, source: NvmlSource, n: int) -> None:
        self.source, self.n, self.name = source, n, f"nvml-x{n}"
        self._uuid = source.gpu_uuids[0]

    @property
    def gpus(self) -> list[tuple[int, str]]:
        return [(i, f"{self._uuid}/{i}") for i in range(self.n)]

    @property
    def gpu_uuids(self) -> list[str]:
        return [uuid for _, uuid in self.gpus]

    def read_gpu(self, position: int) -> GpuReading:
        return dataclasses.replace(self.source.read_gpu(0), gpu_uuid=f"{self._uuid}/{position}", gpu_index=position)

    def read_energy(self, position: int) -> int | None:
        return self.source.read_energy(0)

    def recover(self, position: int) -> None:
        self.source.recover(0)

    def read(self) -> list[GpuReading]:
        return [self.read_gpu(p) for p in range(self.n)]

    def close(self) -> None:
        pass


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]  # noqa: E731
    return {
        "p50_ms": round(pick(0.5) * 1e3, 3),
        "p99_ms": round(pick(0.99) * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
    }


def _summarise(
    readings: list[GpuReading],
    tick_costs: list[float],
    ticks: int,
    missed: int,
    seconds: float,
    energy_costs: list[float | None] | None,
) -> dict[str, Any]:
    uuids = sorted({r.gpu_uuid for r in readings})
    per_gpu = {}
    for uuid in uuids:
        fast = [r for r in readings if r.gpu_uuid == uuid and r.power_w is not None]
        counter = sorted((r for r in readings if r.gpu_uuid == uuid and r.energy_mj is not None), key=lambda r: r.t)
        spacing = [b.t - a.t for a, b in zip(counter, counter[1:], strict=False)]
        changed = sum(b.energy_mj != a.energy_mj for a, b in zip(counter, counter[1:], strict=False))
        per_gpu[uuid] = {
            "fast_rows_per_s": round(len(fast) / seconds, 1),
            "counter_rows": len(counter),
            "counter_spacing_median_ms": round(statistics.median(spacing) * 1e3, 2) if spacing else None,
            "counter_spacing_max_ms": round(max(spacing) * 1e3, 2) if spacing else None,
            "counter_changed_share": round(changed / len(spacing), 3) if spacing else None,
            "power_w_range": [min(r.power_w for r in fast), max(r.power_w for r in fast)] if fast else None,
        }
    return {
        "seconds": round(seconds, 2),
        "ticks": ticks,
        "missed_ticks": missed,
        "tick_read_time": _percentiles(tick_costs),
        "energy_read_cost_ms": None
        if energy_costs is None
        else [None if c is None else round(c * 1e3, 3) for c in energy_costs],
        "gpus": per_gpu
        if len(per_gpu) <= 2
        else {"first": per_gpu[uuids[0]], "last": per_gpu[uuids[-1]], "count": len(per_gpu)},
    }


def threaded(source: Any, seconds: float, load_s: float) -> dict[str, Any]:
    readings: list[GpuReading] = []
    lock, stop, costs = threading.Lock(), threading.Event(), []

    def emit(batch: list[GpuReading]) -> None:
        with lock:
            readings.extend(batch)

    sampler = GpuSampler(source, emit, stop, energy_interval_s=0.1, retry_s=5.0)
    energy_costs = sampler.measure_energy_read_cost(reads=20)

    def step() -> None:
        started = time.perf_counter()
        sampler.sample()
        costs.append(time.perf_counter() - started)

    load = None
    if load_s > 0:

        def start_load() -> None:
            nonlocal load
            load = subprocess.Popen([sys.executable, "-c", LOAD.format(seconds=load_s)])

        threading.Timer((seconds - load_s) / 2, start_load).start()
    sampler.start_energy_threads()
    threading.Timer(seconds, stop.set).start()
    began = time.monotonic()
    ticks, missed = run_on_schedule(0.01, stop, step, "sampling")
    seconds = time.monotonic() - began
    sampler.join()
    if load is not None:
        load.wait(60)
    return _summarise(readings, costs, ticks, missed, seconds, energy_costs)


def inline(source: Any, seconds: float) -> dict[str, Any]:
    readings: list[GpuReading] = []
    stop, costs = threading.Event(), []
    positions = range(len(source.gpus))

    def step() -> None:
        started = time.perf_counter()
        for position in positions:
            readings.append(source.read_gpu(position))
            before = time.time()
            value = source.read_energy(position)
            readings.append(
                GpuReading(
                    source.gpus[position][1],
                    position,
                    (before + time.time()) / 2,
                    None,
                    value,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            )
        costs.append(time.perf_counter() - started)

    threading.Timer(seconds, stop.set).start()
    began = time.monotonic()
    ticks, missed = run_on_schedule(0.01, stop, step, "inline sampling")
    return _summarise(readings, costs, ticks, missed, time.monotonic() - began, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--load-s", type=float, default=6.0, help="matmul load in the middle of phase 1 (0: none)")
    parser.add_argument("--out", default="telemetry_sampler_gpu.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = NvmlSource()
    source.open()
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    result = {
        "what": "bench/telemetry_sampler_gpu.py: NvmlSource + GpuSampler at 10 ms, counter every 100 ms",
        "gpu": pynvml.nvmlDeviceGetName(handle),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "gpus": source.gpus,
        "threaded": threaded(source, args.seconds, args.load_s),
        "threaded_x8": threaded(Replicated(source, 8), args.seconds, 0.0),
        "inline_x8": inline(Replicated(source, 8), args.seconds / 2),
    }
    source.close()
    text = json.dumps(result, indent=2, default=str)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
