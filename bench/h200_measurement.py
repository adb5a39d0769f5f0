"""Prove the measurement path on a real GPU: NVML telemetry + the engine host + window energy.

Runs the project's own pieces, in one process tree, without Redis or PostgreSQL (the lent GPU machine has
neither): the telemetry daemon's NVML source sampling in a thread at the production default interval, the
worker runtime's spawned engine host running the transformers adapter on CUDA, and the control worker's
window-energy maths over the samples. Prints a table and writes JSON.

    python bench/h200_measurement.py --model random:llama-1b --batch-sizes 1 8 32 64 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

from lem_shared.config.schema import ExperimentConfig, Workload
from lem_shared.measure.energy import Sample, window_energy
from lem_shared.measure.metrics import run_metrics
from lem_shared.runtime.engine_host import EngineHost
from lem_telemetry.sources import GpuReading, open_source

ADAPTER = "lem_worker_pytorch.adapter:TransformersAdapter"


class Sampler(threading.Thread):
    """The telemetry source read on a drift-free schedule, samples kept in memory."""

    def __init__(self, source: Any, interval_s: float):
        super().__init__(daemon=True)
        self.source, self.interval_s = source, interval_s
        self.readings: list[GpuReading] = []
        self.stop_event = threading.Event()
        self.missed = 0

    def run(self) -> None:
        start, tick = time.monotonic(), 0
        while not self.stop_event.is_set():
            self.readings.extend(self.source.read())
            tick += 1
            due = start + tick * self.interval_s
            now = time.monotonic()
            if now > due:
                skipped = int((now - due) / self.interval_s) + 1
                self.missed += skipped
                tick += skipped
                due = start + tick * self.interval_s
            self.stop_event.wait(due - now if due > now else 0)

    def samples(self, uuid: str) -> list[Sample]:
        return [Sample(r.t, r.energy_mj, r.power_w) for r in list(self.readings) if r.gpu_uuid == uuid]

    def window(self, uuid: str, start: float, end: float) -> list[GpuReading]:
        return [r for r in list(self.readings) if r.gpu_uuid == uuid and start <= r.t <= end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-1b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batches", type=int, default=4, help="batches per run (num_prompts = batches x bs)")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--interval", type=float, default=0.1, help="telemetry interval, s (production default)")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle sampling before the first run")
    parser.add_argument("--out", type=Path, default=Path("h200_measurement.json"))
    parser.add_argument("--source", default="nvml", help="telemetry source (replay:PATH only for a smoke test)")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()

    source, reason = open_source(args.source)
    if source is None:
        raise SystemExit(f"NVML unavailable: {reason}")
    read_cost = source.measure_energy_read_cost() if hasattr(source, "measure_energy_read_cost") else float("nan")
    sampler = Sampler(source, args.interval)
    sampler.start()
    print(f"NVML GPUs: {source.gpu_uuids}; energy-counter read cost {read_cost * 1e3:.2f} ms")
    idle_start = time.time()
    time.sleep(args.idle_s)
    idle_end = time.time()

    engine = EngineHost(ADAPTER, args.device, timeout_s=1800)
    rows: list[dict[str, Any]] = []
    try:
        for bs in args.batch_sizes:
            experiment = ExperimentConfig(
                model=args.model,
                dtype="bfloat16",
                batch_size=bs,
                warmup_batches=2,
                workload=Workload(num_prompts=bs * args.batches, input_len=args.input_len, output_len=args.output_len),
            )
            m = engine.measure(experiment.model_dump(mode="json"))
            time.sleep(3 * args.interval + 0.3)  # let telemetry pass the window's end
            uuid = m.gpu_uuid
            assert uuid in source.gpu_uuids, f"torch's GPU UUID {uuid} is not one NVML reports"
            energy = window_energy(sampler.samples(uuid), m.window_start, m.window_end)
            inside = sampler.window(uuid, m.window_start, m.window_end)
            metrics = run_metrics(m)
            row = {
                "batch_size": bs,
                "device_name": m.device_name,
                "gpu_uuid": uuid,
                "window_s": m.window_end - m.window_start,
                "output_tokens": metrics["output_tokens"],
                "tokens_per_s": metrics["tokens_per_s"],
                "latency_mean_s": metrics["latency_mean_s"],
                "ttft_mean_s": metrics["ttft_mean_s"],
                "peak_memory_gib": (m.peak_memory_bytes or 0) / 2**30,
                "model_load_s": m.model_load_s,
                "model_reused": m.model_reused,
                "energy_j": energy.energy_j,
                "power_integral_j": energy.power_integral_j,
                "integral_vs_counter_pct": (
                    100 * (energy.power_integral_j - energy.energy_j) / energy.energy_j
                    if energy.energy_j and energy.power_integral_j
                    else None
                ),
                "mean_power_w": energy.mean_power_w,
                "j_per_token": energy.energy_j / metrics["output_tokens"] if energy.energy_j else None,
                "samples_in_window": energy.samples_in_window,
                "max_temp_c": max((r.temperature_c or 0) for r in inside) if inside else None,
                "sm_clock_mhz_mean": (sum(r.sm_clock_mhz or 0 for r in inside) / len(inside)) if inside else None,
                "clock_event_reasons_seen": sorted(
                    {r.clock_event_reasons for r in inside if r.clock_event_reasons is not None}
                ),
                "environment": m.environment,
            }
            rows.append(row)
            print(
                f"bs={bs:>3}  window {row['window_s']:.2f} s  {row['tokens_per_s']:.0f} tok/s  "
                f"{row['energy_j']:.1f} J  {row['mean_power_w']:.0f} W  {row['j_per_token'] * 1e3:.2f} mJ/token  "
                f"∫P vs counter {row['integral_vs_counter_pct']:+.2f} %  samples {row['samples_in_window']}",
                flush=True,
            )
    finally:
        engine.stop()
        sampler.stop_event.set()
        sampler.join()

    first = source.gpu_uuids[0]
    idle = window_energy(sampler.samples(first), idle_start + args.interval, idle_end)
    result = {
        "what": "bench/h200_measurement.py: telemetry NVML source + engine host (transformers, CUDA) + window energy",
        "host": platform.node(),
        "model": args.model,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "telemetry_interval_s": args.interval,
        "telemetry_missed_ticks": sampler.missed,
        "telemetry_samples": len(sampler.readings),
        "energy_counter_read_cost_ms": read_cost * 1e3,
        "idle_before": {"seconds": idle_end - idle_start, "mean_power_w": idle.mean_power_w},
        "runs": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"idle before runs: {idle.mean_power_w:.1f} W; telemetry {len(sampler.readings)} samples, "
        f"{sampler.missed} ticks missed; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
