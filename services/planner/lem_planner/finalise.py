"""Finalising a measured run: attribute energy to its window from telemetry (edge reads, counter or power
integral; baselines; prefill/decode split; FLOPs), judge its validity, and write the run's result once."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from lem_planner.campaigns import close_campaign_if_finished
from lem_shared.config.schema import ExperimentConfig, MeasurementProtocol
from lem_shared.db.clock import CLOCK_LOOKUP_S, CLOCK_SKEW_S, CLOCK_WARN_S
from lem_shared.db.measurements import deep_idle_span
from lem_shared.db.models import (
    BatchTimingRow,
    Campaign,
    ClockOffset,
    Environment,
    Experiment,
    GpuSample,
    HostEnergySample,
    RequestTimingRow,
    Run,
    RunMetrics,
    RunStatus,
)
from lem_shared.db.session import session_scope
from lem_shared.dispatch import aware
from lem_shared.measure import flops as flops_model
from lem_shared.measure.analysis import (
    Check,
    RunContext,
    RunFacts,
    TelemetrySample,
    Thresholds,
    analyse_window,
    checks_without_telemetry,
    run_checks,
    verdict_of,
)
from lem_shared.measure.carbon import CarbonIntensity
from lem_shared.measure.energy import Sample, edge_energy, window_energy
from lem_shared.measure.metrics import request_traces
from lem_shared.measure.prefill_decode import WindowFigures, energy_uncertainty, split
from lem_shared.measure.serving import EngineStep as ServingStep
from lem_shared.measure.serving import SteadyState, request_energy, steady_state, steady_state_energy, summarize
from lem_shared.params.snapshots import installed_context
from lem_shared.run_record import stored
from lem_shared.settings import get_settings

# Samples this far outside a span are read so both edges can be interpolated.
EDGE_MARGIN = timedelta(seconds=2)


HOST_MARGIN_S = 5.0  # RAPL samples read around the window, to interpolate at its edges


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _samples(gpu_uuid: str, start: float, end: float, shift_s: float = 0.0) -> list[TelemetrySample]:
    """The GPU's samples over [start, end] on the run's clock: stamped on the telemetry host's, they are read
    ``shift_s`` earlier and moved that much later (``clock_join``)."""
    start, end = start - shift_s, end - shift_s
    with session_scope() as s:
        rows = s.execute(
            select(
                GpuSample.time,
                GpuSample.power_w,
                GpuSample.energy_mj,
                GpuSample.temperature_c,
                GpuSample.sm_clock_mhz,
                GpuSample.clock_event_reasons,
                GpuSample.utilization_gpu,
                GpuSample.power_instant_w,
            )
            .where(
                GpuSample.gpu_uuid == gpu_uuid,
                GpuSample.time >= _utc(start) - EDGE_MARGIN,
                GpuSample.time <= _utc(end) + EDGE_MARGIN,
            )
            .order_by(GpuSample.time)
        ).all()
    return [
        TelemetrySample(aware(t).timestamp() + shift_s, p, e, temp, sm, reasons, util, instant)
        for t, p, e, temp, sm, reasons, util, instant in rows
    ]


def clock_join(run: Run, gpu_uuid: str) -> tuple[float, Check | None, dict[str, Any] | None]:
    """How far the GPU's samples are shifted onto the run's clock, the check saying why, and its figures.

    The run's times come from its worker's host clock, the samples' from their telemetry host's: each host's
    offset from the database's clock is on record (the run's at claim and end, telemetry's in clock_offsets), so
    their difference is the skew between the two. Beyond ``CLOCK_SKEW_S`` the samples are shifted by it (and the
    check warns); a host whose worker and telemetry agree but whose clock is off the database's by more than
    ``CLOCK_WARN_S`` is flagged (its runs' times are off), its samples left as stamped. No check for a run or host
    with no offset on record (recorded before migration 0012, or imported)."""
    offsets = [o for o in (run.clock_offset_s, run.clock_offset_end_s) if o is not None]
    if not offsets or run.window_start is None:
        return 0.0, None, None
    around = aware(run.window_start).timestamp() - offsets[0]  # the window's start on the database's clock
    with session_scope() as s:
        host = s.scalar(
            select(GpuSample.host)
            .where(
                GpuSample.gpu_uuid == gpu_uuid,
                GpuSample.time >= _utc(around - CLOCK_LOOKUP_S),
                GpuSample.time <= _utc(around + CLOCK_LOOKUP_S),
            )
            .limit(1)
        )
        nearest = (
            s.execute(
                select(ClockOffset.offset_s, ClockOffset.rtt_s)
                .where(
                    ClockOffset.host == host,
                    ClockOffset.measured_at >= around - CLOCK_LOOKUP_S,
                    ClockOffset.measured_at <= around + CLOCK_LOOKUP_S,
                )
                .order_by(func.abs(ClockOffset.measured_at - around))
                .limit(1)
            ).one_or_none()
            if host is not None
            else None
        )
    if host is None:
        return 0.0, None, None
    worker = sum(offsets) / len(offsets)
    if nearest is None:
        return 0.0, Check("clock_join", "skipped", f"no clock offset on record for telemetry host {host}"), None
    skew = worker - nearest.offset_s
    facts = {
        "worker_host": run.host,
        "worker_offset_s": round(worker, 4),
        "telemetry_host": host,
        "telemetry_offset_s": round(nearest.offset_s, 4),
        "skew_s": round(skew, 4),
        "shift_s": 0.0,
    }
    figures = (
        f"from the database's clock: worker host {run.host} {worker:+.3f} s, telemetry host {host} "
        f"{nearest.offset_s:+.3f} s"
    )
    stepped = max(offsets) - min(offsets)
    if abs(skew) > CLOCK_SKEW_S:
        facts["shift_s"] = round(skew, 4)
        message = (
            f"the run's clock and its samples' differ by {skew:+.3f} s ({figures}); the samples were shifted by "
            "that onto the run's clock"
        )
        return skew, Check("clock_join", "warning", message), facts
    if stepped > CLOCK_WARN_S:
        message = f"the worker's clock moved by {stepped:.3f} s against the database's during the run ({figures})"
        return 0.0, Check("clock_join", "warning", message), facts
    if abs(worker) > CLOCK_WARN_S:
        message = (
            f"the host's clock is {worker:+.3f} s off the database's; its worker and telemetry agree ({figures}), "
            "so the samples join as stamped, but the run's times are that far off: fix the host's time sync"
        )
        return 0.0, Check("clock_join", "warning", message), facts
    return 0.0, Check("clock_join", "pass", f"the run's and its samples' clocks agree ({figures})"), facts


def _span(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value else None


def run_facts(run: Run, metrics: RunMetrics, experiment: ExperimentConfig) -> RunFacts | None:
    """What the worker recorded of the window's batches against what the workload asks; None when it recorded no
    batch timings (then the run checks are skipped)."""
    with session_scope() as s:
        rows = s.execute(
            select(BatchTimingRow.batch_size, BatchTimingRow.latency_s)
            .where(BatchTimingRow.run_id == run.id)
            .order_by(BatchTimingRow.batch_index)
        ).all()
    if not rows:
        return None
    workload = experiment.workload
    per_pass = -(-workload.num_prompts // experiment.batch_size)
    tokens_per_prompt = workload.output_len * experiment.section().completions_per_prompt()
    return RunFacts(
        output_tokens=metrics.output_tokens,
        expected_output_tokens=sum(size for size, _ in rows) * tokens_per_prompt,
        batches=len(rows),
        expected_batches=metrics.passes * per_pass,
        batch_latencies_s=tuple(latency for _, latency in rows),
        batch_shapes=len({size for size, _ in rows}),
    )


def _thresholds(protocol: MeasurementProtocol) -> Thresholds:
    """The protocol's minimum window; the window's latency spread is never held steadier than warm-up had to be."""
    return Thresholds(
        min_window_s=protocol.min_window_s, max_latency_cv=max(Thresholds.max_latency_cv, protocol.warmup_cv)
    )


def _warmup_context(metrics: RunMetrics, protocol: MeasurementProtocol, **fields: Any) -> RunContext:
    return RunContext(
        warmup_converged=metrics.warmup_converged,
        warmup_cv=metrics.warmup_final_cv,
        warmup_iterations=metrics.warmup_iterations,
        warmup_cv_threshold=protocol.warmup_cv,
        **fields,
    )


def checks_fields(
    run: Run, metrics: RunMetrics, protocol: MeasurementProtocol, facts: RunFacts | None
) -> dict[str, Any]:
    """The verdict and checks of a run without GPU telemetry: warm-up, window length, tokens counted and latency
    spread; every energy check is reported as not applicable."""
    assert run.window_start is not None and run.window_end is not None
    duration = (aware(run.window_end) - aware(run.window_start)).total_seconds()
    checks = checks_without_telemetry(duration, facts, _warmup_context(metrics, protocol), _thresholds(protocol))
    verdict = verdict_of(checks)
    return {
        "verdict": verdict,
        "analysis": {
            "name": f"run {run.id}",
            "duration_s": duration,
            "telemetry": None,
            "verdict": verdict,
            "checks": [asdict(c) for c in checks],
        },
    }


def _gpu_fields(
    run: Run,
    gpu_uuid: str,
    metrics: RunMetrics,
    protocol: MeasurementProtocol,
    wait_s: float,
    facts: RunFacts | None,
    steady: SteadyState | None,
    serving_here: bool,
) -> dict[str, Any]:
    """One GPU's energy, baselines, throttling and validity verdict over the run's window, from telemetry;
    ``serving_here``: also share its energy among a serving run's requests."""
    assert run.window_start is not None and run.window_end is not None
    start, end = aware(run.window_start).timestamp(), aware(run.window_end).timestamp()
    phases = run.phases or {}
    before, after = _span(phases.get("idle_before")), _span(phases.get("idle_after"))
    settings = get_settings()
    needed_until = max(end, after[1] if after else end) + settings.telemetry_interval_s
    read_from = before[0] if before else start

    shift, clock_check, clock_facts = clock_join(run, gpu_uuid)
    deadline = time.monotonic() + wait_s
    samples = _samples(gpu_uuid, read_from, needed_until, shift)
    while (not samples or samples[-1].t < needed_until) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = _samples(gpu_uuid, read_from, needed_until, shift)
    if not any(start <= x.t <= end for x in samples):
        return {
            "energy_note": f"no telemetry for {gpu_uuid} over the window within {wait_s:.0f} s "
            "(is lem-telemetry running on that host?)"
        }

    context = _warmup_context(metrics, protocol, interval_s=settings.telemetry_interval_s, before=before, after=after)
    limits = _thresholds(protocol)
    edges_j, edges_note = edge_energy(phases.get("edges"), gpu_uuid)
    analysis = analyse_window(
        samples,
        start,
        end,
        name=f"run {run.id}",
        context=context,
        thresholds=limits,
        edge_energy_j=edges_j,
        edge_note=edges_note,
    )
    analysis.checks.extend(run_checks(facts, limits))
    if clock_check is not None:
        analysis.checks.append(clock_check)
    serving = serving_energy(phases.get("serving"), run.requests, samples, steady) if serving_here else None
    if serving is not None:
        analysis.checks.append(serving.pop("check"))
    analysis.verdict = verdict_of(analysis.checks)
    deep_span = deep_idle_span(run.campaign_id, gpu_uuid)
    deep_idle_w = None
    if deep_span:
        deep = _samples(gpu_uuid, *deep_span, shift)
        deep_idle_w = window_energy([Sample(x.t, x.energy_mj, x.power_w) for x in deep], *deep_span).mean_power_w

    if analysis.energy_edges_j is not None:
        energy, source = analysis.energy_edges_j, "nvml_energy_counter_at_edges"
    elif analysis.energy_counter_j is not None:
        energy, source = analysis.energy_counter_j, "nvml_energy_counter"
    elif analysis.energy_integral_j is not None:
        energy, source = analysis.energy_integral_j, "nvml_power_integral"
    else:
        energy, source = None, None
    baseline, method = (
        (deep_idle_w, "deep_idle_before_campaign")
        if deep_idle_w is not None
        else (analysis.idle_before_w, "active_idle_before_window")
        if analysis.idle_before_w is not None
        else (None, None)
    )
    failed = [c for c in analysis.checks if c.status == "fail"]
    load = _span(phases.get("model_load"))
    load_energy = None
    if load:  # a cold start: the load's own energy, apart from the window's
        load_samples = _samples(gpu_uuid, *load, shift)
        load_energy = window_energy([Sample(x.t, x.energy_mj, x.power_w) for x in load_samples], *load).energy_j
    return {
        "model_load_energy_j": load_energy,
        "energy_j": energy,
        "energy_power_integral_j": analysis.energy_integral_j,
        "energy_source": source,
        "energy_note": "; ".join(c.message for c in failed) or None,
        "energy_adjusted_j": energy - baseline * analysis.duration_s if energy is not None and baseline else None,
        "baseline_power_w": baseline,
        "baseline_method": method,
        "deep_idle_power_w": deep_idle_w,
        "idle_before_w": analysis.idle_before_w,
        "idle_after_w": analysis.idle_after_w,
        "mean_power_w": analysis.mean_power_w,
        "peak_power_w": analysis.peak_power_w,
        "max_temperature_c": analysis.max_temperature_c,
        "j_per_token": energy / metrics.output_tokens if energy is not None and metrics.output_tokens else None,
        "j_per_request": energy / metrics.requests if energy is not None and metrics.requests else None,
        "tokens_per_j": metrics.output_tokens / energy if energy else None,
        "verdict": analysis.verdict,
        **{k: v for k, v in (serving or {}).items() if k != "per_request_j"},
        "analysis": {
            **analysis.to_dict(),
            **({"request_energy_j": serving["per_request_j"]} if serving else {}),
            **({"clock": clock_facts} if clock_facts else {}),
        },
    }


def energy_fields(
    run: Run,
    metrics: RunMetrics,
    protocol: MeasurementProtocol,
    wait_s: float,
    facts: RunFacts | None = None,
    steady: SteadyState | None = None,
    carbon: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Energy, baselines, throttling and the validity verdict of a measured run, from telemetry: per GPU of the
    run and summed (every check per GPU), the host's CPU and DRAM energy where RAPL is sampled, their total and its
    carbon; without a GPU the checks that need none, and energy n/a with the reason."""
    gpus = list(run.gpu_uuids or ([run.gpu_uuid] if run.gpu_uuid else []))
    if not gpus:
        fields = {
            "energy_note": f"n/a (no NVML): run on {run.device}, which has no GPU energy counter",
            **checks_fields(run, metrics, protocol, facts),
        }
    else:
        per_gpu = [
            _gpu_fields(run, uuid, metrics, protocol, wait_s, facts, steady, serving_here=len(gpus) == 1)
            for uuid in gpus
        ]
        fields = per_gpu[0] if len(per_gpu) == 1 else _summed(gpus, per_gpu, metrics)
        if "analysis" in fields:
            fields["energy_gpu_j"] = fields.get("energy_j")
    if run.window_start is not None and run.window_end is not None:
        start, end = aware(run.window_start).timestamp(), aware(run.window_end).timestamp()
        idle = _span((run.phases or {}).get("idle_before"))
        fields.update(host_energy_fields(run.host, start, end, fields.get("energy_gpu_j"), carbon, idle))
    return fields


def _summed(gpus: list[str], per_gpu: list[dict[str, Any]], metrics: RunMetrics) -> dict[str, Any]:
    """A multi-GPU run's figures: energies and mean powers summed over its GPUs, the highest peak and temperature,
    every GPU's checks (each message names its GPU; one failing GPU fails the run), and each GPU's own figures."""
    if any("analysis" not in f for f in per_gpu):  # a GPU without telemetry: its note is the run's
        missing = [f"{uuid}: {f['energy_note']}" for uuid, f in zip(gpus, per_gpu, strict=True) if "analysis" not in f]
        return {"energy_note": "; ".join(missing)}

    def total(name: str) -> float | None:
        values = [f[name] for f in per_gpu]
        return sum(values) if all(v is not None for v in values) else None

    checks = [
        {**check, "message": f"GPU {uuid}: {check['message']}"}
        for uuid, f in zip(gpus, per_gpu, strict=True)
        for check in f["analysis"]["checks"]
    ]
    verdict = verdict_of([Check(c["name"], c["status"], c["message"]) for c in checks])
    energy = total("energy_j")
    sources = sorted({f["energy_source"] for f in per_gpu if f["energy_source"]})
    first = per_gpu[0]
    return {
        **first,
        "model_load_energy_j": total("model_load_energy_j"),
        "energy_j": energy,
        "energy_power_integral_j": total("energy_power_integral_j"),
        "energy_source": "+".join(sources) or None,
        "energy_note": "; ".join(
            f"{uuid}: {f['energy_note']}" for uuid, f in zip(gpus, per_gpu, strict=True) if f["energy_note"]
        )
        or None,
        "energy_adjusted_j": total("energy_adjusted_j"),
        "baseline_power_w": total("baseline_power_w"),
        "deep_idle_power_w": total("deep_idle_power_w"),
        "idle_before_w": total("idle_before_w"),
        "idle_after_w": total("idle_after_w"),
        "mean_power_w": total("mean_power_w"),
        "peak_power_w": max((f["peak_power_w"] for f in per_gpu if f["peak_power_w"] is not None), default=None),
        "max_temperature_c": max(
            (f["max_temperature_c"] for f in per_gpu if f["max_temperature_c"] is not None), default=None
        ),
        "j_per_token": energy / metrics.output_tokens if energy is not None and metrics.output_tokens else None,
        "j_per_request": energy / metrics.requests if energy is not None and metrics.requests else None,
        "tokens_per_j": metrics.output_tokens / energy if energy else None,
        "verdict": verdict,
        "analysis": {
            **first["analysis"],
            "checks": checks,
            "verdict": verdict,
            "per_gpu": {
                uuid: {
                    "energy_j": f["energy_j"],
                    "energy_source": f["energy_source"],
                    "mean_power_w": f["mean_power_w"],
                    "baseline_power_w": f["baseline_power_w"],
                    "verdict": f["verdict"],
                }
                for uuid, f in zip(gpus, per_gpu, strict=True)
            },
        },
    }


def host_energy_fields(
    host: str | None,
    start: float,
    end: float,
    gpu_j: float | None,
    carbon: dict[str, Any] | None,
    idle: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The run's host's CPU package and DRAM energy over the window from its RAPL samples (the cumulative counter
    interpolated at both edges, per domain; a reset inside the window leaves that domain unknown), with each
    domain's idle power over the idle gap before the window (its own baseline), the measured total and its grams
    CO2e at the campaign's grid intensity."""
    cpu_j = dram_j = None
    note = f"n/a (no RAPL): no CPU or DRAM energy samples from host {host}: RAPL is absent or unreadable there"
    if host:
        domains = host_domain_energy(host, start, end)
        if domains:
            known = {d: j for d, j in domains.items() if j is not None}
            cpu = [j for d, j in known.items() if "/" not in d]
            dram = [j for d, j in known.items() if d.endswith("/dram")]
            cpu_j, dram_j = (sum(cpu) if cpu else None), (sum(dram) if dram else None)
            unknown = sorted(d for d, j in domains.items() if j is None)
            note = f"rapl: {', '.join(sorted(domains))}" + (
                f"; counter reset in the window: {', '.join(unknown)} not counted" if unknown else ""
            )
            idle_j = host_domain_energy(host, *idle) if idle and idle[1] > idle[0] else {}
            idle_w = {d: j / (idle[1] - idle[0]) for d, j in idle_j.items() if j is not None and idle}
            if idle_w:
                note += "; idle before the window: " + ", ".join(f"{d} {w:.1f} W" for d, w in sorted(idle_w.items()))
    parts = [j for j in (gpu_j, cpu_j, dram_j) if j is not None]
    total_j = sum(parts) if parts else None
    out: dict[str, Any] = {
        "energy_cpu_j": cpu_j,
        "energy_dram_j": dram_j,
        "energy_total_j": total_j,
        "energy_host_note": note,
    }
    if carbon and total_j is not None:
        try:  # a window outside the series, or a series stored before it was checked: said, never extrapolated
            intensity = (
                CarbonIntensity.constant(carbon["g_per_kwh"])
                if carbon.get("g_per_kwh") is not None
                else CarbonIntensity.series([tuple(p) for p in carbon["series"]], carbon.get("source") or "series")
            )
            estimate = intensity.grams(total_j, start, end)
            out.update(carbon_g=estimate.grams, carbon_source=estimate.source)
        except ValueError as exc:
            out.update(carbon_g=None, carbon_source=f"n/a: {exc}")
    return out


def host_domain_energy(host: str, start: float, end: float) -> dict[str, float | None]:
    """Joules per RAPL domain of ``host`` between ``start`` and ``end`` (None where a reset lies between)."""
    with session_scope() as s:
        rows = s.execute(
            select(HostEnergySample.domain, HostEnergySample.time, HostEnergySample.energy_j, HostEnergySample.reset)
            .where(
                HostEnergySample.host == host,
                HostEnergySample.time >= _utc(start - HOST_MARGIN_S),
                HostEnergySample.time <= _utc(end + HOST_MARGIN_S),
            )
            .order_by(HostEnergySample.time)
        ).all()
    by_domain: dict[str, list[tuple[float, float, bool]]] = {}
    for domain, at, joules, reset in rows:
        by_domain.setdefault(domain, []).append((aware(at).timestamp(), joules, reset))
    out: dict[str, float | None] = {}
    for domain, points in by_domain.items():
        times = [p[0] for p in points]
        if not points or times[0] > start or times[-1] < end:
            continue  # the samples do not reach both edges
        if any(reset for t, _, reset in points if start < t <= end):
            out[domain] = None
            continue
        out[domain] = _interpolate(points, end) - _interpolate(points, start)
    return out


def _interpolate(points: list[tuple[float, float, bool]], at: float) -> float:
    for (t0, j0, _), (t1, j1, _) in zip(points, points[1:], strict=False):
        if t0 <= at <= t1:
            return j0 if t1 == t0 else j0 + (j1 - j0) * (at - t0) / (t1 - t0)
    return points[-1][1]


def store_finalised(s: Session, run: Run, fields: dict[str, Any]) -> None:
    """Write a run's finalised figures, and a serving run's per-request energies (one bulk UPDATE)."""
    s.execute(update(RunMetrics).where(RunMetrics.run_id == run.id).values(**stored(fields)))
    per_request = (fields.get("analysis") or {}).get("request_energy_j") or {}
    rows = [
        {"id": r.id, "energy_j": per_request[str(r.request_index)]}
        for r in run.requests
        if str(r.request_index) in per_request
    ]
    if rows:
        s.execute(update(RequestTimingRow), rows)


def steady_of(run: Run, max_concurrency: int | None) -> SteadyState | None:
    """A serving run's steady state from its stored engine steps (occupancy) and its requests' arrivals."""
    steps = ((run.phases or {}).get("serving") or {}).get("steps")
    if not steps or not run.requests or run.window_end is None:
        return None
    occupancy = [(step[0], step[2]) for step in steps] + [(aware(run.window_end).timestamp(), 0)]
    try:
        return steady_state(occupancy, max_concurrency=max_concurrency, arrivals=[r.arrival for r in run.requests])
    except ValueError:  # no request ever ran: no steady state to record
        return None


def steady_fields(steady: SteadyState | None, window_start: datetime | None) -> dict[str, Any]:
    """The steady state's bounds (seconds after the window's start), level and how it was found."""
    if steady is None or window_start is None:
        return {}
    origin = aware(window_start).timestamp()
    return {
        "steady_start_s": steady.start - origin,
        "steady_end_s": steady.end - origin,
        "steady_level": steady.level,
        "steady_method": "; ".join([steady.method, *steady.warnings]),
    }


def serving_energy(
    serving: dict[str, Any] | None,
    requests: list[RequestTimingRow],
    samples: list[TelemetrySample],
    steady: SteadyState | None,
) -> dict[str, Any] | None:
    """A serving run's energy from telemetry's counter, interpolated: each engine step's energy shared among its
    requests by token share (per-request energy, checked to add up to the steps' span within 1 %), and J/token,
    tokens/J, J/request in its steady state. None for an offline run."""
    if not serving or not serving.get("steps") or not requests:
        return None
    counter: dict[float, float] = {}
    for x in samples:
        if x.energy_mj is not None:
            counter.setdefault(x.t, x.energy_mj / 1000)
    points = sorted(counter.items())
    steps = [
        ServingStep(start=s, end=e, tokens={int(k): (v[0], v[1]) for k, v in tokens.items()})
        for s, e, _, _, tokens in serving["steps"]
    ]
    try:
        per_request, check = request_energy(steps, points)
        traces = request_traces(requests)
        window = (steady.start, steady.end) if steady is not None else None
        in_steady = steady_state_energy(traces, points, window) if window and window[1] > window[0] else None
    except ValueError as exc:
        return {"check": Check("request_energy_sum", "fail", f"per-request energy not attributed: {exc}")}
    energies = [per_request[r.request_index] for r in requests if r.request_index in per_request]
    summary = summarize(energies)
    status = "pass" if check.ok else "fail"
    message = (
        f"requests' energies add up to {check.attributed_j:.2f} J of the steps' {check.span_j:.2f} J, with "
        f"{check.idle_j:.2f} J idle (no request in the engine) ({check.relative_difference * 100:+.2f} %, within "
        f"{check.tolerance * 100:.0f} % needed; host work between steps {check.busy_gaps_j:.2f} J, attributed; "
        f"token-less steps {check.unattributed_steps_j:.2f} J)"
    )
    return {
        "check": Check("request_energy_sum", status, message),
        "per_request_j": {str(k): v for k, v in per_request.items()},
        "steady_energy_j": in_steady.energy_j if in_steady else None,
        "steady_j_per_token": in_steady.j_per_token if in_steady else None,
        "steady_tokens_per_j": in_steady.tokens_per_j if in_steady else None,
        "steady_j_per_request": in_steady.j_per_request if in_steady else None,
        "request_energy_mean_j": summary.mean if summary else None,
        "request_energy_p50_j": summary.p50 if summary else None,
        "request_energy_p90_j": summary.p90 if summary else None,
        "request_energy_p99_j": summary.p99 if summary else None,
    }


def _window_figures(analysis: dict[str, Any] | None, duration_s: float, prompts: int) -> WindowFigures:
    a = analysis or {}
    edges, telemetry = a.get("energy_edges_j"), a.get("energy_counter_j")
    counter, integral = edges if edges is not None else telemetry, a.get("energy_integral_j")
    energy = counter if counter is not None else integral
    uncertainty = (
        energy_uncertainty(counter, integral, a.get("mean_power_w"), duration_s, a.get("counter_updates") or 0)
        if counter is not None
        else None
    )
    return WindowFigures(energy, uncertainty, duration_s, prompts)


def phase_fields(
    run: Run,
    metrics: RunMetrics,
    experiment: ExperimentConfig,
    window_analysis: dict[str, Any] | None,
    gpu_name: str | None,
) -> dict[str, Any]:
    """The run's prefill/decode split (measurement.phase_split) and counted-vs-analytic FLOPs (profiler: flops),
    for its analysis; empty when the run measured neither."""
    phases = run.phases or {}
    out: dict[str, Any] = {}
    shape = phases.get("model_shape")
    workload = experiment.workload
    prefill = phases.get("prefill")
    if prefill:
        start, end = prefill["window"]
        prefill_analysis = None
        if run.gpu_uuid is not None:
            before, after = _span(prefill.get("idle_before")), _span(prefill.get("idle_after"))
            samples = _samples(
                run.gpu_uuid,
                before[0] if before else start,
                (after[1] if after else end) + get_settings().telemetry_interval_s,
            )
            if any(start <= x.t <= end for x in samples):
                edges_j, edges_note = edge_energy(prefill.get("edges"), run.gpu_uuid)
                prefill_analysis = analyse_window(
                    samples,
                    start,
                    end,
                    name=f"run {run.id} prefill",
                    context=RunContext(before=before, after=after),
                    edge_energy_j=edges_j,
                    edge_note=edges_note,
                ).to_dict()
        out["phase_split"] = split(
            _window_figures(window_analysis, metrics.duration_s, metrics.requests),
            _window_figures(prefill_analysis, end - start, prefill["prompts"]),
            input_len=workload.input_len,
            output_len=workload.output_len,
            batch_size=experiment.batch_size,
            model_shape=shape,
            gpu_name=gpu_name,
            dtype=experiment.dtype,
        )
        out["phase_split"]["prefill_window"].update(
            verdict=(prefill_analysis or {}).get("verdict"),
            checks=[c for c in (prefill_analysis or {}).get("checks", []) if c["status"] != "pass"],
        )
    counted = phases.get("flops_counted")
    if counted and shape:
        batch = min(experiment.batch_size, workload.num_prompts)
        analytic = {
            "prefill_flops": flops_model.prefill_flops(shape, batch, workload.input_len),
            "decode_flops": flops_model.decode_flops(shape, batch, workload.input_len, workload.output_len),
        }
        out["flops"] = {
            "batch_size": batch,
            "analytic": analytic,
            "counted": {k: counted.get(k) for k in ("method", "prefill_flops", "decode_flops", "forward_calls")},
            "ratio": {
                phase: counted[f"{phase}_flops"] / analytic[f"{phase}_flops"]
                for phase in ("prefill", "decode")
                if counted.get(f"{phase}_flops") and analytic[f"{phase}_flops"]
            },
        }
    return out


# Runs a finalise of this process is working on: a re-sent finalise of one of them returns at once instead of
# waiting for telemetry beside it (the claim in _finalise keeps two processes from both writing).
_finalising: set[int] = set()
_finalising_lock = threading.Lock()


def finalise_run(run_id: int, wait_s: float | None = None) -> str:
    """Attach energy to a measured run (waiting up to ``wait_s`` for telemetry), then close the campaign if done.

    Returns "finalised" only for the one call that finalised the run; a redelivered or re-sent finalise of a run
    already finalised, or being finalised by this process, writes nothing."""
    with _finalising_lock:
        if run_id in _finalising:
            return "being finalised"
        _finalising.add(run_id)
    try:
        return _finalise(run_id, get_settings().energy_wait_s if wait_s is None else wait_s)
    finally:
        with _finalising_lock:
            _finalising.discard(run_id)


def _finalise(run_id: int, wait_s: float) -> str:
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            return "unknown run"
        metrics = s.get(RunMetrics, run_id)
        experiment = s.get(Experiment, run.experiment_id)
        campaign = s.get(Campaign, run.campaign_id)
        carbon = (campaign.spec or {}).get("carbon") if campaign else None
        environment = s.get(Environment, run.environment_id) if run.environment_id else None
        gpus = (environment.data or {}).get("gpus") if environment else None
        gpu_name = gpus[0].get("name") if isinstance(gpus, list) and gpus else None
        run.requests  # noqa: B018 - loaded now: serving energy reads them after the session closes
        s.expunge_all()
    if run.status == RunStatus.MEASURED and metrics is not None and experiment is not None:
        # checked against the snapshot of the engine the run used, as the engine host checked it
        engine_versions = (environment.data or {}).get("engine_versions") if environment else None
        config = ExperimentConfig.model_validate(experiment.config, context=installed_context(engine_versions or {}))
        steady = steady_of(run, config.workload.max_concurrency)
        fields = {
            **steady_fields(steady, run.window_start),
            **energy_fields(run, metrics, config.measurement, wait_s, run_facts(run, metrics, config), steady, carbon),
        }
        extra = phase_fields(run, metrics, config, fields.get("analysis"), gpu_name)
        if extra:
            fields["analysis"] = {**(fields.get("analysis") or {}), **extra}
        with session_scope() as s:
            # The claim: of two finalises of one run (two control workers, a redelivery) one writes; the other's
            # UPDATE waits for the first to commit and then matches nothing.
            claim = s.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.MEASURED).values(status=RunStatus.DONE)
            )
            claimed = cast(CursorResult[Any], claim).rowcount
            if claimed:
                store_finalised(s, run, fields)
        outcome = "finalised" if claimed else "already finalised"
    else:
        outcome = "already finalised" if run.status != RunStatus.MEASURED else "not finalisable (no metrics)"
    close_campaign_if_finished(run.campaign_id)
    return outcome
