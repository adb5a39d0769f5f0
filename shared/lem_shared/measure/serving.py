"""Serving-run maths (issue 18): per-request latencies (TTFT, TPOT, ITL, E2E) and their summaries, throughput and
goodput, the steady-state window of an occupancy trace, and each request's energy from engine steps sampled
against a cumulative energy counter. Pure functions on timestamps in seconds (one clock for all inputs)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

RequestId = Hashable

DEFAULT_TOLERANCE = 0.01  # the requests' energies must add up to the steps' span energy within 1 %
MIN_STEADY_S = 30.0
MIN_STEADY_FRACTION = 0.6
MAX_COUNTER_POWER_W = 100_000.0  # above this a counter is in the wrong unit (mJ given as J) or broken
MAX_PREFILL_WEIGHT = 1000.0


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    return number


def _whole(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _pair(name: str, item: object, what: str = "(time, value)") -> tuple[object, object]:
    if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
        raise ValueError(f"{name} must be a {what} pair, got {item!r}")
    return item[0], item[1]


# --- latencies -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestTrace:
    """One request as the engine recorded it. ``token_times`` holds every output token's time (first included,
    so it has ``output_tokens`` entries; tokens delivered together share a time); ``finish`` is when the request
    completed (at or after its last token)."""

    arrival: float
    first_token: float
    token_times: Sequence[float]
    finish: float
    prompt_tokens: int
    output_tokens: int
    request_id: RequestId | None = None

    def __post_init__(self) -> None:
        label = "request" if self.request_id is None else f"request {self.request_id!r}"
        arrival = _real(f"{label}: arrival", self.arrival)
        first = _real(f"{label}: first_token", self.first_token)
        finish = _real(f"{label}: finish", self.finish)
        _whole(f"{label}: prompt_tokens", self.prompt_tokens, 0)
        output = _whole(f"{label}: output_tokens", self.output_tokens, 1)
        if isinstance(self.token_times, str) or not isinstance(self.token_times, Sequence):
            raise ValueError(f"{label}: token_times must be a list of times, got {self.token_times!r}")
        times = tuple(_real(f"{label}: token_times[{i}]", t) for i, t in enumerate(self.token_times))
        object.__setattr__(self, "token_times", times)
        if len(times) != output:
            raise ValueError(
                f"{label}: token_times has {len(times)} times but output_tokens is {output}: record one time per "
                "output token (tokens streamed together share a time)"
            )
        if first < arrival:
            raise ValueError(f"{label}: first_token {first} is before arrival {arrival}: one clock for both")
        if times[0] != first:
            raise ValueError(f"{label}: token_times[0] = {times[0]} must equal first_token = {first}")
        for i in range(1, len(times)):
            if times[i] < times[i - 1]:
                raise ValueError(f"{label}: token_times[{i}] = {times[i]} is before token_times[{i - 1}]: sort them")
        if finish < times[-1]:
            raise ValueError(f"{label}: finish {finish} is before its last token at {times[-1]}")


@dataclass(frozen=True)
class RequestLatency:
    """One request's latencies in seconds; ``tpot_s`` is None for a 1-token output (there is no decode)."""

    ttft_s: float
    tpot_s: float | None
    itl_s: tuple[float, ...]
    e2e_s: float
    output_tokens: int


def request_latency(trace: RequestTrace) -> RequestLatency:
    """TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1); ITL = each gap between
    consecutive tokens; E2E = finish - arrival."""
    times = trace.token_times
    tpot = None if trace.output_tokens == 1 else (trace.finish - trace.first_token) / (trace.output_tokens - 1)
    return RequestLatency(
        ttft_s=trace.first_token - trace.arrival,
        tpot_s=tpot,
        itl_s=tuple(later - earlier for earlier, later in zip(times, times[1:], strict=False)),
        e2e_s=trace.finish - trace.arrival,
        output_tokens=trace.output_tokens,
    )


def request_latencies(traces: Sequence[RequestTrace]) -> list[RequestLatency]:
    """``request_latency`` of each trace, in order."""
    for i, trace in enumerate(traces):
        if not isinstance(trace, RequestTrace):
            raise ValueError(f"traces[{i}] must be a RequestTrace, got {type(trace).__name__}")
    return [request_latency(trace) for trace in traces]


@dataclass(frozen=True)
class Summary:
    """Mean and percentiles (linear interpolation between closest ranks, numpy's default) of ``count`` values."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float


def summarize(values: Sequence[float]) -> Summary | None:
    """Summary of the values; None when there are none."""
    if len(values) == 0:
        return None
    array = np.asarray([_real(f"values[{i}]", v) for i, v in enumerate(values)], dtype=float)
    p50, p90, p99 = (float(p) for p in np.percentile(array, [50, 90, 99]))
    return Summary(count=len(array), mean=float(array.mean()), p50=p50, p90=p90, p99=p99)


def latency_summary(latencies: Sequence[RequestLatency]) -> dict[str, Summary | None]:
    """Summaries under ``ttft_s``, ``tpot_s`` (requests with a TPOT only), ``itl_s`` (every gap of every request,
    pooled) and ``e2e_s``; a metric without values is None."""
    return {
        "ttft_s": summarize([lat.ttft_s for lat in latencies]),
        "tpot_s": summarize([lat.tpot_s for lat in latencies if lat.tpot_s is not None]),
        "itl_s": summarize([gap for lat in latencies for gap in lat.itl_s]),
        "e2e_s": summarize([lat.e2e_s for lat in latencies]),
    }


# --- throughput and goodput ------------------------------------------------------------------------------------


def _run_duration(traces: Sequence[RequestTrace], duration_s: float | None) -> float:
    if not traces:
        raise ValueError("traces is empty: a run needs at least one request")
    if duration_s is None:
        duration = max(t.finish for t in traces) - min(t.arrival for t in traces)
        if duration <= 0:
            raise ValueError("the run lasts 0 s (first arrival = last finish): give duration_s")
        return duration
    duration = _real("duration_s", duration_s)
    if duration <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration}")
    return duration


@dataclass(frozen=True)
class Throughput:
    duration_s: float
    requests: int
    output_tokens: int
    requests_per_s: float
    output_tokens_per_s: float


def throughput(traces: Sequence[RequestTrace], duration_s: float | None = None) -> Throughput:
    """Completed requests and output tokens per second over the run: ``duration_s``, or by default from the first
    arrival to the last finish."""
    duration = _run_duration(traces, duration_s)
    tokens = sum(t.output_tokens for t in traces)
    return Throughput(duration, len(traces), tokens, len(traces) / duration, tokens / duration)


@dataclass(frozen=True)
class Goodput:
    """Requests per second that met every given SLO (a value at the SLO meets it)."""

    requests_per_s: float
    good_requests: int
    requests: int
    duration_s: float
    slos_ms: dict[str, float]


def goodput(
    traces: Sequence[RequestTrace],
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    e2e_ms: float | None = None,
    duration_s: float | None = None,
) -> Goodput:
    """Goodput over the run (duration as in ``throughput``). A 1-token request has no TPOT and meets a TPOT SLO:
    it had no decode to be slow in."""
    slos: dict[str, float] = {}
    for name, slo in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms), ("e2e_ms", e2e_ms)):
        if slo is not None:
            value = _real(name, slo)
            if value <= 0:
                raise ValueError(f"{name} must be > 0 ms, got {value}")
            slos[name] = value
    if not slos:
        raise ValueError("goodput needs at least one SLO: give ttft_ms, tpot_ms or e2e_ms")
    duration = _run_duration(traces, duration_s)
    good = 0
    for lat in request_latencies(traces):
        if "ttft_ms" in slos and lat.ttft_s * 1000 > slos["ttft_ms"]:
            continue
        if "tpot_ms" in slos and lat.tpot_s is not None and lat.tpot_s * 1000 > slos["tpot_ms"]:
            continue
        if "e2e_ms" in slos and lat.e2e_s * 1000 > slos["e2e_ms"]:
            continue
        good += 1
    return Goodput(good / duration, good, len(traces), duration, slos)


# --- steady state ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SteadyState:
    """The steady-state window [start, end] at ``level`` running requests, how it was found, and warnings.
    ``share_at_level`` is the share of the window spent at or above the level (below 1 when it dipped)."""

    start: float
    end: float
    level: int
    method: str
    warnings: tuple[str, ...]
    run_start: float
    run_end: float
    share_at_level: float

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def fraction_of_run(self) -> float:
        return self.duration_s / (self.run_end - self.run_start)


def _occupancy(occupancy: Sequence[tuple[float, int]]) -> tuple[np.ndarray, np.ndarray]:
    if len(occupancy) < 2:
        raise ValueError(f"occupancy needs at least 2 (time, running) samples, got {len(occupancy)}")
    times: list[float] = []
    running: list[int] = []
    for i, item in enumerate(occupancy):
        t, n = _pair(f"occupancy[{i}]", item)
        times.append(_real(f"occupancy[{i}] time", t))
        running.append(_whole(f"occupancy[{i}] running", n, 0))
        if i and times[i] <= times[i - 1]:
            raise ValueError(f"occupancy[{i}] time {times[i]} is not after the previous {times[i - 1]}: sort them")
    return np.asarray(times), np.asarray(running)


def steady_state(
    occupancy: Sequence[tuple[float, int]],
    max_concurrency: int | None = None,
    plateau_tolerance: float = 0.0,
    min_duration_s: float = MIN_STEADY_S,
    min_fraction: float = MIN_STEADY_FRACTION,
    arrivals: Sequence[float] | None = None,
) -> SteadyState:
    """The window from when the running count first reaches the run's level until it drops below it for good.

    A run that reaches its ``max_concurrency`` is saturated: its level is the cap. One that does not, given its
    request ``arrivals``, is arrival-bound: the level is the median count running while requests arrive (time-
    weighted), and the window runs from first reaching it until the last arrival (the backlog drains after it);
    a peak reached for an instant would make no window.

    ``occupancy`` holds (time, running requests) samples, each count holding until the next sample; the run spans
    the first to the last sample. The level is ``max_concurrency`` when the run reaches it, else the most running
    at once. With ``plateau_tolerance`` t a count of at least level * (1 - t) counts as at the level (for runs
    without a cap, whose peak is a spike). The window ends at the first sample after the last one at the level,
    or at the run's end if it never dropped. Warns when the window is under ``min_duration_s`` or under
    ``min_fraction`` of the run."""
    times, running = _occupancy(occupancy)
    tolerance = _real("plateau_tolerance", plateau_tolerance)
    if not 0 <= tolerance < 1:
        raise ValueError(f"plateau_tolerance must be in [0, 1), got {tolerance}")
    min_duration = _real("min_duration_s", min_duration_s)
    min_share = _real("min_fraction", min_fraction)
    if min_duration < 0 or not 0 <= min_share <= 1:
        raise ValueError(f"min_duration_s must be >= 0 and min_fraction in [0, 1], got {min_duration}, {min_share}")
    peak = int(running.max())
    if peak == 0:
        raise ValueError("occupancy never has a running request: no steady state to find")
    warnings: list[str] = []
    cap = _whole("max_concurrency", max_concurrency, 1) if max_concurrency is not None else None
    bound = _arrival_bound(times, running, arrivals) if arrivals and (cap is None or peak < cap) else None
    if bound is not None:
        level, start, end = bound
        at_level = running >= level
        method = (
            f"level = median running while requests arrive, {level} (the cap was not reached); from first "
            "reaching it until the last arrival (then the backlog drains)"
        )
    else:
        if cap is not None and peak >= cap:
            level, source = cap, f"max_concurrency {cap}"
        else:
            level, source = peak, f"max reached {peak}"
            if cap is not None:
                warnings.append(f"max_concurrency {cap} was never reached: the window is at the most running, {peak}")
        at_level = running >= level * (1 - tolerance)
        indices = np.flatnonzero(at_level)
        first, last = int(indices[0]), int(indices[-1])
        start = float(times[first])
        if last + 1 < len(times):
            end, ending = float(times[last + 1]), "until it dropped below for good"
        else:
            end, ending = float(times[-1]), "until the run ended (it never dropped)"
        threshold = f" (at least {level * (1 - tolerance):g} counts)" if tolerance else ""
        method = f"level = {source}{threshold}; from first reaching it {ending}"

    durations = np.diff(times)
    inside = (times[:-1] >= start) & (times[:-1] < end)
    window = end - start
    share = float(durations[inside & at_level[:-1]].sum() / window) if window > 0 else 1.0
    run_start, run_end = float(times[0]), float(times[-1])
    fraction = window / (run_end - run_start)
    if window < min_duration:
        warnings.append(f"steady state lasts {window:.3g} s, under {min_duration:g} s")
    if fraction < min_share:
        warnings.append(f"steady state covers {fraction:.0%} of the run, under {min_share:.0%}")
    return SteadyState(start, end, level, method, tuple(warnings), run_start, run_end, share)


def _arrival_bound(
    times: np.ndarray, running: np.ndarray, arrivals: Sequence[float]
) -> tuple[int, float, float] | None:
    """(level, start, end) of an arrival-bound run, or None when its arrivals leave no window."""
    first_arrival = min(_real("arrival", a) for a in arrivals)
    last_arrival = max(_real("arrival", a) for a in arrivals)
    durations = np.diff(times)
    during = (times[:-1] >= first_arrival) & (times[:-1] < last_arrival)
    if not during.any():
        return None
    counts, weights = running[:-1][during], durations[during]
    order = np.argsort(counts, kind="stable")
    cumulative = np.cumsum(weights[order])
    level = int(counts[order][int(np.searchsorted(cumulative, cumulative[-1] / 2))])
    if level < 1:
        return None
    reached = np.flatnonzero((running >= level) & (times >= first_arrival))
    if not reached.size or float(times[reached[0]]) >= last_arrival:
        return None
    return level, float(times[reached[0]]), float(last_arrival)


# --- energy ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineStep:
    """One engine step: its bounds and, per request in it, (prefill tokens, decode tokens) it processed."""

    start: float
    end: float
    tokens: Mapping[RequestId, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = _real("step start", self.start)
        end = _real("step end", self.end)
        if end < start:
            raise ValueError(f"step end {end} is before its start {start}")
        if not isinstance(self.tokens, Mapping):
            raise ValueError(f"step tokens must map request id -> (prefill, decode), got {self.tokens!r}")
        for request_id, counts in self.tokens.items():
            prefill, decode = _pair(f"step at {start}: tokens[{request_id!r}]", counts, "(prefill, decode)")
            _whole(f"step at {start}: tokens[{request_id!r}] prefill", prefill, 0)
            _whole(f"step at {start}: tokens[{request_id!r}] decode", decode, 0)


class EnergyCounter:
    """A cumulative energy counter (time s, joules) read at any time inside its samples by linear interpolation."""

    def __init__(self, samples: Sequence[tuple[float, float]]) -> None:
        if len(samples) < 2:
            raise ValueError(f"counter needs at least 2 (time, joules) samples, got {len(samples)}")
        times: list[float] = []
        joules: list[float] = []
        for i, item in enumerate(samples):
            t, j = _pair(f"counter[{i}]", item)
            times.append(_real(f"counter[{i}] time", t))
            joules.append(_real(f"counter[{i}] joules", j))
            if not i:
                continue
            if times[i] <= times[i - 1]:
                raise ValueError(f"counter[{i}] time {times[i]} is not after the previous {times[i - 1]}: sort them")
            if joules[i] < joules[i - 1]:
                raise ValueError(
                    f"counter[{i}]: the cumulative energy fell from {joules[i - 1]} J at t={times[i - 1]} to "
                    f"{joules[i]} J at t={times[i]}: a counter reset or wrap; split the run at the reset"
                )
            power = (joules[i] - joules[i - 1]) / (times[i] - times[i - 1])
            if power > MAX_COUNTER_POWER_W:
                raise ValueError(
                    f"counter[{i}]: {power:.3g} W between t={times[i - 1]} and t={times[i]} is above "
                    f"{MAX_COUNTER_POWER_W:g} W: give the counter in joules (not mJ) and times in seconds"
                )
        self.times = np.asarray(times)
        self.joules = np.asarray(joules)

    def at(self, when: Sequence[float] | np.ndarray) -> np.ndarray:
        """The cumulative joules at each time; a time outside the samples is an error (no extrapolation)."""
        points = np.asarray(when, dtype=float)
        if points.size and (points.min() < self.times[0] or points.max() > self.times[-1]):
            raise ValueError(
                f"times {points.min()}..{points.max()} s reach outside the energy counter's samples "
                f"{self.times[0]}..{self.times[-1]} s: sample the counter from before the first step to after the last"
            )
        return np.interp(points, self.times, self.joules)

    def between(self, start: float, end: float) -> float:
        low, high = self.at([start, end])
        return float(high - low)


@dataclass(frozen=True)
class EnergyCheck:
    """The attributed energy against the counter's energy over the steps' span [span_start, span_end].
    ``gaps_j`` fell between steps: ``busy_gaps_j`` of it while a request of the step before went on to a later
    step (the engine's host work between steps, attributed with that step), ``idle_j`` while none did (no request
    in the engine, waiting for the next arrival: no request's). ``unattributed_steps_j`` fell in steps without
    tokens. The check: what was attributed plus the idle energy is the span's energy within ``tolerance``."""

    span_start: float
    span_end: float
    span_j: float
    attributed_j: float
    steps_j: float
    gaps_j: float
    busy_gaps_j: float
    idle_j: float
    unattributed_steps_j: float
    relative_difference: float
    tolerance: float
    ok: bool


def _steps(steps: Sequence[EngineStep]) -> list[EngineStep]:
    if not steps:
        raise ValueError("steps is empty: give the engine's steps")
    for i, step in enumerate(steps):
        if not isinstance(step, EngineStep):
            raise ValueError(f"steps[{i}] must be an EngineStep, got {type(step).__name__}")
    ordered = sorted(steps, key=lambda s: (s.start, s.end))
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if later.start < earlier.end:
            raise ValueError(
                f"steps overlap: one runs {earlier.start}..{earlier.end} s, the next starts at {later.start} s; "
                "an engine's steps are sequential (one list per engine)"
            )
    return ordered


def _prefill_weight(value: float) -> float:
    weight = _real("prefill_weight", value)
    if not 0 < weight <= MAX_PREFILL_WEIGHT:
        raise ValueError(
            f"prefill_weight must be in (0, {MAX_PREFILL_WEIGHT:g}] (1.0: a token is a share), got {weight}"
        )
    return weight


def request_energy(
    steps: Sequence[EngineStep],
    counter: Sequence[tuple[float, float]],
    prefill_weight: float = 1.0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[dict[RequestId, float], EnergyCheck]:
    """Each request's joules: every step's counter energy shared among its requests by token share, a prefill
    token weighing ``prefill_weight`` decode tokens. The gap after a step goes with that step when one of its
    requests continues in the next step (the engine was busy with them between steps); a gap after which none
    continues is idle (the engine waited for an arrival) and goes to no request. The check compares the attributed
    energy plus the idle energy with the counter's energy over the steps' span (first start to last end); it fails
    when token-less steps hold more than ``tolerance`` of it."""
    ordered = _steps(steps)
    weight = _prefill_weight(prefill_weight)
    limit = _real("tolerance", tolerance)
    if not 0 <= limit < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {limit}")
    energy = EnergyCounter(counter)
    # each step's own span, then the gap to the next step's start (none after the last)
    edges = [t for step in ordered for t in (step.start, step.end)]
    nexts = [following.start for following in ordered[1:]]
    joules_at = energy.at(edges + nexts)
    bounds = joules_at[: len(edges)].reshape(-1, 2)
    step_joules = bounds[:, 1] - bounds[:, 0]
    gap_joules = [float(joules_at[len(edges) + i] - bounds[i, 1]) for i in range(len(nexts))] + [0.0]
    per_request: dict[RequestId, float] = {}
    unattributed = busy = idle = 0.0
    for i, (step, joules) in enumerate(zip(ordered, step_joules, strict=True)):
        continues = i + 1 < len(ordered) and not ordered[i + 1].tokens.keys().isdisjoint(step.tokens)
        gap = gap_joules[i]
        if continues:
            busy += gap
        else:
            idle += gap
        shares = {rid: weight * prefill + decode for rid, (prefill, decode) in step.tokens.items()}
        total = sum(shares.values())
        if total == 0:
            unattributed += float(joules) + (gap if continues else 0.0)
            continue
        joules_here = float(joules) + (gap if continues else 0.0)
        for rid, share in shares.items():
            per_request[rid] = per_request.get(rid, 0.0) + joules_here * share / total
    span_start, span_end = ordered[0].start, max(step.end for step in ordered)
    span_j = energy.between(span_start, span_end)
    steps_j = float(step_joules.sum())
    attributed = sum(per_request.values())
    difference = (attributed + idle - span_j) / span_j if span_j > 0 else 0.0
    check = EnergyCheck(
        span_start=span_start,
        span_end=span_end,
        span_j=span_j,
        attributed_j=attributed,
        steps_j=steps_j,
        gaps_j=span_j - steps_j,
        busy_gaps_j=busy,
        idle_j=idle,
        unattributed_steps_j=unattributed,
        relative_difference=difference,
        tolerance=limit,
        ok=abs(difference) <= limit,
    )
    return per_request, check


@dataclass(frozen=True)
class SteadyStateEnergy:
    """Energy efficiency in the window [start, end]: the counter's joules over the window against the output
    tokens emitted (token times) and the requests finished in it. ``attributed_j_per_request`` is the mean
    per-request energy of the requests that arrived and finished inside the window (None without per-request
    energies or without such requests)."""

    start: float
    end: float
    energy_j: float
    output_tokens: int
    requests_finished: int
    j_per_token: float | None
    tokens_per_j: float | None
    j_per_request: float | None
    attributed_j_per_request: float | None
    requests_inside: int


def steady_state_energy(
    traces: Sequence[RequestTrace],
    counter: Sequence[tuple[float, float]],
    window: SteadyState | tuple[float, float],
    per_request_j: Mapping[RequestId, float] | None = None,
) -> SteadyStateEnergy:
    """J/token, tokens/J and J/request in the steady-state window. A token counts when its time lies in
    [start, end), a request when its finish does. ``per_request_j`` (from ``request_energy``, keyed by the traces'
    request_id) adds the mean attributed energy of the requests wholly inside the window."""
    if isinstance(window, SteadyState):
        start, end = window.start, window.end
    else:
        low, high = _pair("window", window, "(start, end)")
        start, end = _real("window start", low), _real("window end", high)
    if end <= start:
        raise ValueError(f"window end {end} must be after its start {start}")
    for i, trace in enumerate(traces):
        if not isinstance(trace, RequestTrace):
            raise ValueError(f"traces[{i}] must be a RequestTrace, got {type(trace).__name__}")
    energy_j = EnergyCounter(counter).between(start, end)
    tokens = sum(1 for trace in traces for t in trace.token_times if start <= t < end)
    finished = sum(1 for trace in traces if start <= trace.finish < end)
    inside = [trace for trace in traces if trace.arrival >= start and trace.finish < end]
    attributed: float | None = None
    if per_request_j is not None and inside:
        joules = []
        for trace in inside:
            if trace.request_id is None or trace.request_id not in per_request_j:
                raise ValueError(
                    f"request {trace.request_id!r} lies inside the window but has no entry in per_request_j: "
                    "give each trace the request_id its engine steps use"
                )
            joules.append(_real(f"per_request_j[{trace.request_id!r}]", per_request_j[trace.request_id]))
        attributed = sum(joules) / len(joules)
    return SteadyStateEnergy(
        start=start,
        end=end,
        energy_j=energy_j,
        output_tokens=tokens,
        requests_finished=finished,
        j_per_token=energy_j / tokens if tokens else None,
        tokens_per_j=tokens / energy_j if tokens and energy_j > 0 else None,
        j_per_request=energy_j / finished if finished else None,
        attributed_j_per_request=attributed,
        requests_inside=len(inside),
    )
