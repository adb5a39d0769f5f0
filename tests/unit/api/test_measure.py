"""lem.measure on the replayed H200 trace: each window's energy against the trace's own counter over the same span.

The replay (telemetry's ReplaySource) and the sampler share one stepped clock set to trace time, and the sampler
takes a sample per 20 ms step (background=False), so a 10 s phase takes milliseconds and every figure is exact.
One test runs the real sampler thread on the wall clock for half a second.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from pathlib import Path

import pytest

import lem
from lem_shared.measure.analysis import ENERGY_CHECKS, NO_TELEMETRY
from lem_telemetry.sources import REPLAY_UUID, ReplaySource

README_COUNTER_J = {"decode_bs16": 1287.7, "decode_bs64": 1761.0}  # tests/data/h200/README.md
# What the run's checks say of each phase: batch 64 heats the GPU by 12 °C, over the 10 °C a run allows.
VERDICT = {"decode_bs16": ("valid", None), "decode_bs64": ("warning", "temperature_drift")}
STEP_S = 0.02


class SteppedClock:
    """Trace time, moved by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def open_at_trace_time(replay: ReplaySource, clock: SteppedClock) -> None:
    """Open the replay so that the clock reads trace time (the replay starts its trace at the clock's value)."""
    now, clock.t = clock.t, 0.0
    replay.open()
    clock.t = now


class Trace:
    def __init__(self, folder: Path) -> None:
        records = [json.loads(line) for line in (folder / "h200_nvml_trace.jsonl").read_text().splitlines()]
        t0 = records[0]["t"]
        counters = [(r["t"] - t0, r["energy_mj"]) for r in records if r.get("energy_mj") is not None]
        self.offsets, self.counters = [o for o, _ in counters], [e for _, e in counters]
        self.phases: dict[str, tuple[float, float]] = {}
        self.tokens: dict[str, int] = {}
        starts: dict[str, float] = {}
        for line in (folder / "h200_nvml_marks.jsonl").read_text().splitlines():
            mark = json.loads(line)
            label, _, detail = mark["mark"].partition(":")
            name, _, edge = label.rpartition("_")
            if edge == "start":
                starts[name] = mark["t"] - t0
            elif edge == "end":
                self.phases[name] = (starts[name], mark["t"] - t0)
                if detail.endswith("tokens"):
                    self.tokens[name] = int(detail.removesuffix("tokens"))

    def counter_j(self, start: float, end: float) -> float:
        """The trace's counter difference over [start, end] (the last reading at or before each edge)."""

        def at(t: float) -> int:
            return self.counters[bisect.bisect_right(self.offsets, t) - 1]

        return (at(end) - at(start)) / 1000.0


@pytest.fixture(scope="module")
def trace(h200_trace_dir: Path) -> Trace:
    return Trace(h200_trace_dir)


@pytest.fixture
def replay(h200_trace_dir: Path) -> tuple[lem.Sampler, SteppedClock]:
    clock = SteppedClock()
    source = ReplaySource(h200_trace_dir / "h200_nvml_trace.jsonl", clock=clock)

    def opened() -> ReplaySource:
        open_at_trace_time(source, clock)
        return source

    return lem.Sampler(opened, background=False, clock=clock), clock


def run_to(sampler: lem.Sampler, clock: SteppedClock, t: float) -> None:
    """Advance the clock to ``t`` in sampling steps, sampling at each (as the thread would)."""
    while clock.t + STEP_S < t:
        clock.t += STEP_S
        sampler.sample()
    clock.t = t


@pytest.mark.parametrize("phase", list(README_COUNTER_J))
def test_a_decode_phase_reads_the_trace_counter(replay, trace: Trace, phase: str) -> None:  # noqa: ANN001
    sampler, clock = replay
    start, end = trace.phases[phase]
    clock.t = start
    with lem.measure(phase, sampler=sampler, thresholds=lem.Thresholds(min_window_s=5)) as m:
        run_to(sampler, clock, end)
    assert m.gpu_uuids == [REPLAY_UUID] and m.duration_s == pytest.approx(end - start)
    # The edge reads are the trace's counter at the window's edges, to the millijoule.
    assert m.energy_j == pytest.approx(trace.counter_j(start, end), abs=1e-9)
    assert m.energy_j == pytest.approx(README_COUNTER_J[phase], abs=0.05)
    analysis = m.analyses[REPLAY_UUID]
    # The sampler's own counter rows every 100 ms, interpolated at the edges, agree within the counter's steps.
    assert analysis.energy_counter_j == pytest.approx(m.energy_j, rel=0.02)
    tokens = trace.tokens[phase]
    assert m.j_per_token(tokens) == pytest.approx(README_COUNTER_J[phase] / tokens, rel=1e-4)
    verdict, warned = VERDICT[phase]
    assert m.verdict == verdict, m.checks
    assert [c.name for c in m.checks if c.status == "warning"] == ([warned] if warned else [])
    statuses = {c.name: c.status for c in m.checks}
    assert statuses["energy_counter"] == statuses["sample_coverage"] == statuses["counter_vs_integral"] == "pass"
    assert statuses["edges_vs_telemetry"] == statuses["counter_updates"] == "pass"
    assert statuses["warmup_converged"] == "skipped"  # no warm-up in a user's block
    fast = [s for s in m.samples[REPLAY_UUID] if s.power_w is not None and start <= s.t <= end]
    assert len(fast) == pytest.approx((end - start) / STEP_S, abs=2)
    assert all(s.t <= end for s in m.samples[REPLAY_UUID])
    assert not sampler.running  # the last window closed


def test_the_default_thresholds_are_the_runs_window_under_10_s_warns(replay, trace: Trace) -> None:  # noqa: ANN001
    sampler, clock = replay
    start, end = trace.phases["decode_bs16"]  # 8.3 s
    clock.t = start
    with lem.measure("bs16", sampler=sampler) as m:
        run_to(sampler, clock, end)
    window = next(c for c in m.checks if c.name == "window_duration")
    assert window.status == "warning" and "shorter than the 10 s minimum" in window.message
    assert m.verdict == "warning"


def test_under_one_second_the_counter_steps_make_it_invalid(replay, trace: Trace) -> None:  # noqa: ANN001
    sampler, clock = replay
    start, _ = trace.phases["decode_bs64"]
    clock.t = start + 1
    with lem.measure("short", sampler=sampler) as m:
        run_to(sampler, clock, start + 1.5)
    assert m.energy_j == pytest.approx(trace.counter_j(start + 1, start + 1.5), abs=1e-9)
    assert m.verdict == "invalid"
    assert "under 1 s" in (m.note or "")


def test_nested_windows_each_read_their_own_span(replay, trace: Trace) -> None:  # noqa: ANN001
    sampler, clock = replay
    start, end = trace.phases["decode_bs16"]
    clock.t = start - 2
    with lem.measure("outer", sampler=sampler) as outer:
        run_to(sampler, clock, start)
        with lem.measure("inner", sampler=sampler) as inner:
            run_to(sampler, clock, end)
        assert sampler.running  # the outer window is still open
        run_to(sampler, clock, end + 2)
    assert inner.energy_j == pytest.approx(trace.counter_j(start, end), abs=1e-9)
    assert outer.energy_j == pytest.approx(trace.counter_j(start - 2, end + 2), abs=1e-9)
    # The outer window holds the inner one and the 2 s on either side of it.
    around = trace.counter_j(start - 2, start) + trace.counter_j(end, end + 2)
    assert outer.energy_j - inner.energy_j == pytest.approx(around, abs=1e-9)  # type: ignore[operator]
    assert outer.samples[REPLAY_UUID][0].t <= start - 2 and inner.samples[REPLAY_UUID][0].t <= start
    assert outer.verdict in ("valid", "warning") and not sampler.running


def test_overlapping_windows_with_begin_and_end(replay, trace: Trace) -> None:  # noqa: ANN001
    sampler, clock = replay
    s1, s4 = trace.phases["decode_bs64"]
    s2, s3 = s1 + 2, s4 - 2
    clock.t = s1
    a = lem.measure("a", sampler=sampler).begin()
    run_to(sampler, clock, s2)
    b = lem.measure("b", sampler=sampler).begin()
    run_to(sampler, clock, s3)
    a.end()
    with pytest.raises(RuntimeError, match="still open"):
        _ = b.energy_j
    run_to(sampler, clock, s4)
    b.end()
    assert a.energy_j == pytest.approx(trace.counter_j(s1, s3), abs=1e-9)
    assert b.energy_j == pytest.approx(trace.counter_j(s2, s4), abs=1e-9)
    assert a.energy_j + b.energy_j == pytest.approx(trace.counter_j(s1, s4) + trace.counter_j(s2, s3))  # type: ignore[operator]
    assert not sampler.running


def test_the_matmul_burn_shows_the_software_power_cap(replay, trace: Trace) -> None:  # noqa: ANN001
    sampler, clock = replay
    start, end = trace.phases["matmul_burn"]
    clock.t = start
    with lem.measure("burn", sampler=sampler) as m:
        run_to(sampler, clock, end)
    analysis = m.analyses[REPLAY_UUID]
    assert analysis.reason_share["sw_power_cap"] > 0.9 and (analysis.peak_power_w or 0) > 650
    assert m.energy_j == pytest.approx(trace.counter_j(start, end), abs=1e-9)
    assert m.energy_j == pytest.approx(8260.5, rel=0.002)  # the trace README's figure
    assert m.mean_power_w == pytest.approx(m.energy_j / (end - start))  # type: ignore[operator]


class TwoGpus:
    """Two GPUs from one replay (the second reads the same trace): the windows sum them and name each in checks."""

    def __init__(self, replay: ReplaySource) -> None:
        self.replay = replay

    @property
    def gpu_uuids(self) -> list[str]:
        return ["GPU-a", "GPU-b"]

    def read_gpu(self, position: int):  # noqa: ANN201
        return self.replay.read_gpu(0)

    def read_energy(self, position: int) -> int | None:
        return self.replay.read_energy(0)

    def close(self) -> None:
        self.replay.close()


def test_every_gpu_is_measured_and_summed(h200_trace_dir: Path, trace: Trace) -> None:
    clock = SteppedClock()
    replay = ReplaySource(h200_trace_dir / "h200_nvml_trace.jsonl", clock=clock)

    def opened() -> TwoGpus:
        open_at_trace_time(replay, clock)
        return TwoGpus(replay)

    sampler = lem.Sampler(opened, background=False, clock=clock)
    start, end = trace.phases["decode_bs16"]
    clock.t = start
    with lem.measure("two", sampler=sampler) as m:
        run_to(sampler, clock, end)
    assert set(m.analyses) == {"GPU-a", "GPU-b"}
    assert m.energy_j == pytest.approx(2 * trace.counter_j(start, end), abs=1e-9)
    assert sum(c.name == "energy_counter" for c in m.checks) == 2
    assert {c.message.split(":")[0] for c in m.checks} == {"GPU GPU-a", "GPU GPU-b"}


def test_the_sampler_thread_runs_only_while_a_window_is_open(h200_trace_dir: Path) -> None:
    replay = ReplaySource(h200_trace_dir / "h200_nvml_trace.jsonl")  # the wall clock; the trace opens idle

    def opened() -> ReplaySource:
        replay.open()
        return replay

    sampler = lem.Sampler(opened)

    def sampler_threads() -> int:
        return sum(t.name == "lem-measure-sampler" for t in threading.enumerate())

    with lem.measure("idle", sampler=sampler) as m:
        assert sampler.running and sampler_threads() == 1
        time.sleep(0.5)
    assert not sampler.running and sampler_threads() == 0
    fast = [s for s in m.samples[REPLAY_UUID] if s.power_w is not None and m.start <= s.t <= m.end_time]  # type: ignore[operator]
    assert 8 <= len(fast) <= 27  # every 20 ms, on a busy machine perhaps fewer
    # ~77 W idle over ~0.5 s, within one 100 ms counter step at each edge
    assert 77 * (m.duration_s - 0.2) <= m.energy_j <= 78 * (m.duration_s + 0.2)  # type: ignore[operator]
    with lem.measure("again", sampler=sampler):
        assert sampler.running and sampler_threads() == 1
    assert sampler_threads() == 0


def _no_nvml() -> lem.GpuSource:
    raise OSError("NVML Shared Library Not Found")


def test_without_nvml_energy_is_na_and_said() -> None:
    sampler = lem.Sampler(_no_nvml)
    with lem.measure("cpu", sampler=sampler) as m:
        pass
    assert m.energy_j is None and m.j_per_token(100) is None and m.mean_power_w is None
    assert m.note == "n/a (no NVML): OSError: NVML Shared Library Not Found"
    assert m.verdict == "n/a" and m.samples == {} and m.analyses == {}
    checks = {c.name: c for c in m.checks}
    assert all(checks[n].status == "skipped" and checks[n].message == NO_TELEMETRY for n in ENERGY_CHECKS)
    assert checks["window_duration"].status == "warning"  # a block of a few µs, against the run's 10 s
    assert not sampler.running


def test_on_this_host_without_a_gpu_the_default_sampler_says_no_nvml() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this host has NVML: the replay tests cover the figures")
    with lem.measure("here") as m:
        sum(range(1000))
    assert m.energy_j is None and m.verdict == "n/a"
    assert (m.note or "").startswith("n/a (no NVML): NVMLError")


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        lem.measure("")
    with pytest.raises(ValueError, match="thresholds must be a lem.Thresholds"):
        lem.measure("x", thresholds={"min_window_s": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval_s must be a positive number"):
        lem.Sampler(_no_nvml, interval_s=0)
    with pytest.raises(ValueError, match="counter_interval_s must be a positive number"):
        lem.Sampler(_no_nvml, counter_interval_s=float("nan"))
    m = lem.measure("x", sampler=lem.Sampler(_no_nvml))
    with pytest.raises(RuntimeError, match="has not begun"):
        m.end()
    with m, pytest.raises(RuntimeError, match="already begun"):
        m.begin()
    for tokens in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="tokens must be a positive whole number"):
            m.j_per_token(tokens)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="already ended"):
        m.end()
