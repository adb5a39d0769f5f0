"""Window analysis: energy, power, throttling and validity checks for one measurement window.

One implementation serves the control worker's finaliser (samples from PostgreSQL or SQLite) and
`lem energy analyse` (samples from a trace file). Checks each give a status (pass / warning / fail / skipped)
and a message; the verdict is ``invalid`` when any check fails, ``warning`` when any warns, else ``valid``.
`run_checks` holds the checks that need no GPU (tokens counted, latency spread); `checks_without_telemetry` gives a
CPU run those, the warm-up and the window length, with every energy check marked not applicable.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from lem_shared.measure.energy import Sample, window_energy

# NVML clock-event ("throttle") reasons (nvmlClocksEventReason*), by bit.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}
THERMAL = 0x20 | 0x40
POWER_BRAKE = 0x80


@dataclass(frozen=True)
class TelemetrySample:
    t: float
    power_w: float | None
    energy_mj: int | None
    temperature_c: float | None = None
    sm_clock_mhz: int | None = None
    clock_event_reasons: int | None = None
    utilization_gpu: int | None = None
    power_instant_w: float | None = None  # NVML's instantaneous power field, where the GPU has it


@dataclass(frozen=True)
class Thresholds:
    """Where the checks draw their lines; every one is a setting a study can tighten."""

    min_window_s: float = 10.0
    min_counter_updates: int = 10
    min_coverage: float = 0.95
    # ∫P dt vs the counter. The ~1 s averaged power lags every ramp; instantaneous power sampled every 100 ms aliases
    # bursty decoding (measured on the H200: up to +4.1 % over 10 s at batch 64), sampled every 10-20 ms it agrees
    # within 1 % over steady 10 s windows (bench/results/h200_power). Never tighter than the counter's own steps.
    max_disagreement_pct: float = 5.0
    max_disagreement_instant_pct: float = 2.0  # instantaneous power sampled at least every fine_sampling_s
    fine_sampling_s: float = 0.02
    counter_update_s: float = 0.1  # the energy counter's update period (H200: ~100 ms)
    max_thermal_share: float = 0.0
    min_sm_clock_ratio: float = 0.90
    max_temperature_rise_c: float = 10.0
    max_baseline_drift: float = 0.10
    max_busy_utilization_pct: float = 10.0
    max_latency_cv: float = 0.10  # spread of the window's batch latencies (batches of one shape)


@dataclass(frozen=True)
class RunContext:
    """What the run knew beyond the window's own samples; None means unknown (the check is skipped)."""

    interval_s: float | None = None  # telemetry interval; inferred from the samples when None
    before: tuple[float, float] | None = None  # the idle gap just before the window
    after: tuple[float, float] | None = None  # the idle gap just after it
    warmup_converged: bool | None = None
    warmup_cv: float | None = None
    warmup_iterations: int | None = None
    warmup_cv_threshold: float | None = None


@dataclass(frozen=True)
class RunFacts:
    """What the worker recorded about a run's window, checked with or without GPU telemetry."""

    output_tokens: int
    expected_output_tokens: int  # batches x batch size x output_len x completions per prompt
    batches: int
    expected_batches: int  # passes x batches per pass
    batch_latencies_s: tuple[float, ...]
    batch_shapes: int = 1  # distinct batch sizes among the window's batches (a short last batch makes two)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | warning | fail | skipped
    message: str


@dataclass
class WindowAnalysis:
    name: str
    start: float
    end: float
    duration_s: float
    energy_counter_j: float | None
    energy_integral_j: float | None
    disagreement_pct: float | None
    mean_power_w: float | None
    peak_power_w: float | None
    samples: int
    expected_samples: int
    coverage: float | None
    counter_updates: int
    counter_resets: int
    reason_share: dict[str, float]
    thermal_throttling: bool
    power_brake: bool
    max_temperature_c: float | None
    temperature_rise_c: float | None
    sm_clock_mean_mhz: float | None
    sm_clock_before_mhz: float | None
    sm_clock_ratio: float | None
    idle_before_w: float | None
    idle_after_w: float | None
    utilization_before_pct: float | None
    utilization_mean_pct: float | None = None  # NVML GPU utilisation averaged over the window's samples
    energy_edges_j: float | None = None  # the counter read by the engine host at the window's exact edges
    edges_disagreement_pct: float | None = None  # telemetry's interpolated counter vs the edge reads
    power_source: str | None = None  # "instant" or "average": the power reading ∫P dt and peak power used
    verdict: str = "valid"
    checks: list[Check] = field(default_factory=list)

    @property
    def energy_j(self) -> float | None:
        """The window's energy: the edge reads where taken, else telemetry's counter."""
        return self.energy_edges_j if self.energy_edges_j is not None else self.energy_counter_j

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _between(samples: list[TelemetrySample], span: tuple[float, float] | None) -> list[TelemetrySample]:
    return [] if span is None else [s for s in samples if span[0] <= s.t <= span[1]]


def _idle_power(samples: list[TelemetrySample], span: tuple[float, float] | None) -> float | None:
    if span is None or span[1] <= span[0]:
        return None
    return window_energy(_energy_samples(samples), *span).mean_power_w


def _energy_samples(samples: list[TelemetrySample]) -> list[Sample]:
    return [Sample(s.t, s.energy_mj, s.power_w, s.power_instant_w) for s in samples]


def counter_steps_pct(duration_s: float, limits: Thresholds) -> float:
    """One counter update at each edge (2 x 100 ms of the window's power) as a share of the window: how far two
    honest readings of the counter over the same window may differ."""
    return 100 * 2 * limits.counter_update_s / duration_s if duration_s > 0 else float("inf")


def edges_tolerance_pct(duration_s: float, limits: Thresholds) -> float:
    """How far telemetry's interpolated counter may sit from the edge reads: the counter's steps, never under 1 %."""
    return max(1.0, counter_steps_pct(duration_s, limits))


def integral_tolerance_pct(
    source: str | None, interval_s: float | None, duration_s: float, limits: Thresholds
) -> float:
    """How far ∫P dt may sit from the counter, for the power reading it used and how often it was sampled."""
    fine = source == "instant" and interval_s is not None and interval_s <= limits.fine_sampling_s
    base = limits.max_disagreement_instant_pct if fine else limits.max_disagreement_pct
    return max(base, counter_steps_pct(duration_s, limits))


def analyse_window(
    samples: list[TelemetrySample],
    start: float,
    end: float,
    *,
    name: str = "window",
    context: RunContext | None = None,
    thresholds: Thresholds | None = None,
    edge_energy_j: float | None = None,
    edge_note: str | None = None,
) -> WindowAnalysis:
    """Analyse [start, end] from time-ordered samples that reach a little beyond both edges; ``edge_energy_j`` is
    the counter read at the window's edges by the engine host (``edge_note``: why there is none), the figure
    telemetry's own counter reading is checked against."""
    context, limits = context or RunContext(), thresholds or Thresholds()
    duration = end - start
    energy = window_energy(_energy_samples(samples), start, end)
    inside = [s for s in samples if start <= s.t <= end]
    # Telemetry writes the energy counter in rows of its own (power NULL); coverage counts the fast rows.
    fast = [s for s in samples if s.power_w is not None]
    fast_inside = [s for s in inside if s.power_w is not None]
    spacing = [b.t - a.t for a, b in zip(fast, fast[1:], strict=False) if b.t > a.t]
    interval = context.interval_s or (statistics.median(spacing) if spacing else None)
    expected = max(1, round(duration / interval)) if interval and duration > 0 else 0

    reasons = [s.clock_event_reasons for s in inside if s.clock_event_reasons is not None]
    share = {
        label: (sum(1 for r in reasons if r & bit) / len(reasons) if reasons else 0.0)
        for bit, label in CLOCK_EVENT_REASONS.items()
    }
    share["none"] = sum(1 for r in reasons if r == 0) / len(reasons) if reasons else 0.0
    thermal_share = sum(1 for r in reasons if r & THERMAL) / len(reasons) if reasons else 0.0
    brake = any(r & POWER_BRAKE for r in reasons)

    temps = [s.temperature_c for s in inside if s.temperature_c is not None]
    clocks = [float(s.sm_clock_mhz) for s in inside if s.sm_clock_mhz is not None]
    before = _between(samples, context.before)
    clocks_before = [float(s.sm_clock_mhz) for s in before if s.sm_clock_mhz is not None]
    clock_mean, clock_before = _mean(clocks), _mean(clocks_before)
    util_before = [float(s.utilization_gpu) for s in before if s.utilization_gpu is not None]
    instant = [s.power_instant_w for s in inside if s.power_instant_w is not None]
    powers = instant or [s.power_w for s in inside if s.power_w is not None]
    figure = edge_energy_j if edge_energy_j is not None else energy.energy_j
    disagreement = (
        100 * (energy.power_integral_j - figure) / figure if figure and energy.power_integral_j is not None else None
    )
    edges_disagreement = (
        100 * (energy.energy_j - edge_energy_j) / edge_energy_j
        if edge_energy_j and energy.energy_j is not None
        else None
    )

    result = WindowAnalysis(
        name=name,
        start=start,
        end=end,
        duration_s=duration,
        energy_counter_j=energy.energy_j,
        energy_integral_j=energy.power_integral_j,
        disagreement_pct=disagreement,
        mean_power_w=figure / duration if figure is not None and duration > 0 else energy.mean_power_w,
        peak_power_w=max(powers) if powers else None,
        samples=len(fast_inside),
        expected_samples=expected,
        coverage=min(1.0, len(fast_inside) / expected) if expected else None,
        counter_updates=energy.counter_updates,
        counter_resets=energy.counter_resets,
        reason_share=share,
        thermal_throttling=thermal_share > 0,
        power_brake=brake,
        max_temperature_c=max(temps) if temps else None,
        temperature_rise_c=(max(temps) - temps[0]) if temps else None,
        sm_clock_mean_mhz=clock_mean,
        sm_clock_before_mhz=clock_before,
        sm_clock_ratio=clock_mean / clock_before if clock_mean is not None and clock_before is not None else None,
        idle_before_w=_idle_power(samples, context.before),
        idle_after_w=_idle_power(samples, context.after),
        # NVML's utilisation is an average over up to a second, so the run's own warm-up lingers in the first
        # readings of the idle gap; another tenant keeps it up all through, hence the minimum.
        utilization_before_pct=min(util_before) if util_before else None,
        utilization_mean_pct=_mean([float(s.utilization_gpu) for s in inside if s.utilization_gpu is not None]),
        energy_edges_j=edge_energy_j,
        edges_disagreement_pct=edges_disagreement,
        power_source=energy.power_source
        if energy.power_integral_j is not None
        else ("instant" if instant else "average" if powers else None),
    )
    result.checks = _checks(result, context, limits, thermal_share, energy.note, edge_note, interval)
    result.verdict = verdict_of(result.checks)
    return result


def verdict_of(checks: list[Check]) -> str:
    """``invalid`` when any check fails, ``warning`` when any warns, else ``valid`` (skipped ones count for none)."""
    statuses = {c.status for c in checks}
    return "invalid" if "fail" in statuses else "warning" if "warning" in statuses else "valid"


# The checks of analyse_window that need GPU telemetry: without it they are reported as not applicable.
ENERGY_CHECKS = (
    "energy_counter",
    "edges_vs_telemetry",
    "counter_updates",
    "sample_coverage",
    "counter_vs_integral",
    "thermal_throttling",
    "hw_power_brake",
    "sm_clock_drop",
    "temperature_drift",
    "baseline_drift",
    "gpu_busy_before",
    "counter_reset",
)
NO_TELEMETRY = "n/a: no GPU telemetry"


def warmup_check(ctx: RunContext) -> Check:
    """Warm-up converged: a warning when it reached its cap first, with its last CV against the threshold."""
    if ctx.warmup_converged is None:
        return Check("warmup_converged", "skipped", "warm-up not reported")
    batches = f" after {ctx.warmup_iterations} batches" if ctx.warmup_iterations is not None else ""
    cv = f"CV {ctx.warmup_cv:.3f}" if ctx.warmup_cv is not None else ""
    limit = f" vs {ctx.warmup_cv_threshold:g}" if ctx.warmup_cv_threshold is not None else ""
    figures = f" ({cv}{limit})" if cv else ""
    if not ctx.warmup_converged:
        return Check("warmup_converged", "warning", f"warm-up hit its cap{batches} before latencies settled{figures}")
    return Check("warmup_converged", "pass", f"warm-up converged{batches}{figures}")


def window_check(duration_s: float, limits: Thresholds, *, energy_counter: bool) -> Check:
    """Window length: under ``min_window_s`` warns; under 1 s fails where an energy counter's 100 ms steps count."""
    if energy_counter and duration_s < 1.0:
        return Check("window_duration", "fail", f"{duration_s:.2f} s: under 1 s the counter's 100 ms steps dominate")
    if duration_s < limits.min_window_s:
        return Check(
            "window_duration", "warning", f"{duration_s:.2f} s is shorter than the {limits.min_window_s:g} s minimum"
        )
    return Check("window_duration", "pass", f"{duration_s:.2f} s (minimum {limits.min_window_s:g} s)")


def run_checks(facts: RunFacts | None, limits: Thresholds) -> list[Check]:
    """The checks that need no telemetry: every token and batch counted, and how steady the batches were."""
    if facts is None:
        return [Check(name, "skipped", "no batch timings recorded") for name in ("tokens_counted", "latency_spread")]
    checks: list[Check] = []
    if facts.output_tokens != facts.expected_output_tokens or facts.batches != facts.expected_batches:
        checks.append(
            Check(
                "tokens_counted",
                "fail",
                f"{facts.output_tokens} tokens in {facts.batches} batches, expected "
                f"{facts.expected_output_tokens} in {facts.expected_batches}",
            )
        )
    else:
        checks.append(
            Check(
                "tokens_counted",
                "pass",
                f"{facts.output_tokens} tokens in {facts.batches} batches, as the workload asks",
            )
        )
    latencies = [x for x in facts.batch_latencies_s if x > 0]
    if len(latencies) < 2 or facts.batch_shapes > 1:
        why = "batches of different sizes" if facts.batch_shapes > 1 else f"{len(latencies)} batch in the window"
        checks.append(Check("latency_spread", "skipped", f"no spread to compare ({why})"))
    else:
        cv = statistics.stdev(latencies) / statistics.fmean(latencies)
        status = "warning" if cv > limits.max_latency_cv else "pass"
        checks.append(
            Check(
                "latency_spread",
                status,
                f"batch latency CV {cv:.3f} over {len(latencies)} batches "
                f"({'above' if status == 'warning' else 'within'} {limits.max_latency_cv:g})",
            )
        )
    return checks


def checks_without_telemetry(
    duration_s: float, facts: RunFacts | None, context: RunContext, limits: Thresholds
) -> list[Check]:
    """A run without GPU telemetry (a CPU run): warm-up, window length and the run checks; energy checks n/a."""
    return [
        warmup_check(context),
        window_check(duration_s, limits, energy_counter=False),
        *run_checks(facts, limits),
        *(Check(name, "skipped", NO_TELEMETRY) for name in ENERGY_CHECKS),
    ]


def _checks(
    a: WindowAnalysis,
    ctx: RunContext,
    limits: Thresholds,
    thermal_share: float,
    energy_note: str | None,
    edge_note: str | None,
    interval_s: float | None = None,
) -> list[Check]:
    checks: list[Check] = []

    def add(name: str, status: str, message: str) -> None:
        checks.append(Check(name, status, message))

    if a.energy_edges_j is not None:
        add("energy_counter", "pass", f"{a.energy_edges_j:.1f} J from the counter read at the window's edges")
    elif a.energy_counter_j is None:
        add("energy_counter", "fail", energy_note or "no energy-counter reading covers the window")
    else:
        add("energy_counter", "pass", f"{a.energy_counter_j:.1f} J from telemetry's counter samples")

    tolerance = edges_tolerance_pct(a.duration_s, limits)
    if a.edges_disagreement_pct is None:
        add(
            "edges_vs_telemetry",
            "skipped",
            edge_note or ("no edge reads" if a.energy_edges_j is None else "no telemetry counter over the window"),
        )
    elif abs(a.edges_disagreement_pct) > tolerance:
        add(
            "edges_vs_telemetry",
            "warning",
            f"telemetry's counter differs from the edge reads by {a.edges_disagreement_pct:+.2f} % (more than "
            f"{tolerance:.1f} % for a {a.duration_s:.1f} s window: wrong GPU, clock skew or lost samples?)",
        )
    else:
        add(
            "edges_vs_telemetry",
            "pass",
            f"telemetry's counter within {a.edges_disagreement_pct:+.2f} % of the edge reads "
            f"(tolerance {tolerance:.1f} %)",
        )

    checks.append(window_check(a.duration_s, limits, energy_counter=True))

    if a.counter_updates < limits.min_counter_updates:
        add(
            "counter_updates",
            "fail" if a.energy_j is not None else "skipped",
            f"{a.counter_updates} counter updates (< {limits.min_counter_updates}): quantisation error over 10 %",
        )
    else:
        add("counter_updates", "pass", f"{a.counter_updates} counter updates")

    if a.coverage is None:
        add("sample_coverage", "skipped", "no sampling interval known")
    elif a.coverage < limits.min_coverage:
        add(
            "sample_coverage",
            "warning",
            f"{a.samples} of {a.expected_samples} expected samples ({100 * a.coverage:.1f} %)",
        )
    else:
        add("sample_coverage", "pass", f"{a.samples} of {a.expected_samples} expected samples")

    every = f" every {1000 * interval_s:.0f} ms" if interval_s else ""
    power = f"{a.power_source} power{every}" if a.power_source else "power"
    allowed = integral_tolerance_pct(a.power_source, interval_s, a.duration_s, limits)
    if a.disagreement_pct is None:
        add("counter_vs_integral", "skipped", "no power integral or counter figure to compare")
    elif abs(a.disagreement_pct) > allowed:
        add(
            "counter_vs_integral",
            "warning",
            f"∫P dt ({power}) differs from the counter by {a.disagreement_pct:+.2f} %, over {allowed:.1f} % "
            "(power ramps or bursts between samples; the counter is the figure)",
        )
    else:
        add(
            "counter_vs_integral",
            "pass",
            f"∫P dt ({power}) within {a.disagreement_pct:+.2f} % of the counter (tolerance {allowed:.1f} %)",
        )

    if thermal_share > limits.max_thermal_share:
        add("thermal_throttling", "warning", f"thermal clock events in {100 * thermal_share:.1f} % of the window")
    else:
        add("thermal_throttling", "pass", "no thermal clock events")

    if a.power_brake:
        add("hw_power_brake", "fail", f"HW power brake in {100 * a.reason_share['hw_power_brake']:.1f} % of the window")
    else:
        add("hw_power_brake", "pass", "no HW power brake")

    if a.sm_clock_ratio is None:
        add("sm_clock_drop", "skipped", "no SM clock readings before the window")
    elif a.sm_clock_ratio < limits.min_sm_clock_ratio:
        add(
            "sm_clock_drop",
            "warning",
            f"SM clock {a.sm_clock_mean_mhz:.0f} MHz in the window, {100 * a.sm_clock_ratio:.0f} % of "
            f"{a.sm_clock_before_mhz:.0f} MHz before it",
        )
    else:
        add("sm_clock_drop", "pass", f"SM clock at {100 * a.sm_clock_ratio:.0f} % of its pre-window value")

    if a.temperature_rise_c is None:
        add("temperature_drift", "skipped", "no temperature readings")
    elif a.temperature_rise_c > limits.max_temperature_rise_c:
        add("temperature_drift", "warning", f"temperature rose {a.temperature_rise_c:.0f} °C during the window")
    else:
        add("temperature_drift", "pass", f"temperature rose {a.temperature_rise_c:.0f} °C")

    if a.idle_before_w is None or a.idle_after_w is None:
        add("baseline_drift", "skipped", "no idle gap measured on both sides of the window")
    else:
        drift = (a.idle_after_w - a.idle_before_w) / a.idle_before_w
        status = "warning" if abs(drift) > limits.max_baseline_drift else "pass"
        add(
            "baseline_drift",
            status,
            f"idle {a.idle_before_w:.1f} W before, {a.idle_after_w:.1f} W after ({100 * drift:+.1f} %)",
        )

    if a.utilization_before_pct is None:
        add("gpu_busy_before", "skipped", "no utilisation readings just before the window")
    elif a.utilization_before_pct > limits.max_busy_utilization_pct:
        add(
            "gpu_busy_before",
            "fail",
            f"GPU {a.utilization_before_pct:.0f} % busy while this run was idle: another process is using it",
        )
    else:
        add("gpu_busy_before", "pass", f"GPU {a.utilization_before_pct:.0f} % busy before the window")

    checks.append(warmup_check(ctx))

    if a.counter_resets:
        add("counter_reset", "warning", f"the energy counter reset {a.counter_resets} time(s) in the window (bridged)")
    else:
        add("counter_reset", "pass", "no counter reset")
    return checks
