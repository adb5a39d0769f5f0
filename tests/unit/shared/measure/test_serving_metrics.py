"""Serving-run maths pinned on hand-built timestamp streams: latencies, summaries, throughput, goodput, the
steady-state window and per-request energy, each against values worked by hand."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from lem_shared.measure.serving import (
    EngineStep,
    RequestTrace,
    SteadyState,
    goodput,
    latency_summary,
    request_energy,
    request_latencies,
    steady_state,
    steady_state_energy,
    summarize,
    throughput,
)

approx = pytest.approx


def trace(arrival: float, times: list[float], finish: float, request_id: str | None = None) -> RequestTrace:
    return RequestTrace(arrival, times[0], times, finish, 10, len(times), request_id)


# A: 4 even tokens; B: uneven gaps (0.1 then 0.6); C: a single token.
A = trace(0.0, [0.5, 0.6, 0.7, 0.8], 0.8, "a")
B = trace(1.0, [1.2, 1.3, 1.9], 1.9, "b")
C = trace(2.0, [2.3], 2.3, "c")
RUN = [A, B, C]


# --- latencies -------------------------------------------------------------------------------------------------


def test_ttft_tpot_itl_and_e2e_of_three_requests() -> None:
    a, b, c = request_latencies(RUN)
    assert (a.ttft_s, a.tpot_s, a.e2e_s) == (approx(0.5), approx(0.1), approx(0.8))
    assert a.itl_s == approx((0.1, 0.1, 0.1))
    assert (b.ttft_s, b.tpot_s, b.e2e_s) == (approx(0.2), approx(0.35), approx(0.9))
    assert b.itl_s == approx((0.1, 0.6))
    assert (c.ttft_s, c.e2e_s) == (approx(0.3), approx(0.3))
    assert c.tpot_s is None  # a 1-token output has a TTFT but no TPOT
    assert c.itl_s == ()


def test_tpot_counts_the_tail_after_the_last_token_and_itl_does_not() -> None:
    (late,) = request_latencies([trace(0.0, [1.0, 1.1, 1.2], 2.0)])
    assert late.tpot_s == approx(0.5)  # (2.0 - 1.0) / 2
    assert late.itl_s == approx((0.1, 0.1))


def test_summaries_use_numpy_linear_percentiles_and_pool_itl_over_requests() -> None:
    summary = latency_summary(request_latencies(RUN))
    ttft = summary["ttft_s"]
    assert ttft is not None
    assert (ttft.count, ttft.mean, ttft.p50, ttft.p90, ttft.p99) == (
        3,
        approx(1 / 3),
        approx(0.3),
        approx(0.46),
        approx(0.496),
    )
    tpot = summary["tpot_s"]
    assert tpot is not None  # C has no TPOT: two values
    assert (tpot.count, tpot.mean, tpot.p50, tpot.p90, tpot.p99) == (
        2,
        approx(0.225),
        approx(0.225),
        approx(0.325),
        approx(0.3475),
    )
    itl = summary["itl_s"]
    assert itl is not None  # pooled [0.1, 0.1, 0.1, 0.1, 0.6]: A's three gaps weigh three times B's each
    assert (itl.count, itl.mean, itl.p50, itl.p90, itl.p99) == (5, approx(0.2), approx(0.1), approx(0.4), approx(0.58))
    assert itl.mean != approx(tpot.mean)  # uneven gaps: TPOT and ITL differ
    e2e = summary["e2e_s"]
    assert e2e is not None
    assert (e2e.mean, e2e.p50, e2e.p90, e2e.p99) == (approx(2 / 3), approx(0.8), approx(0.88), approx(0.898))


def test_metrics_without_values_summarize_to_none() -> None:
    only_single_tokens = latency_summary(request_latencies([C]))
    assert only_single_tokens["tpot_s"] is None
    assert only_single_tokens["itl_s"] is None
    assert only_single_tokens["ttft_s"] is not None
    assert summarize([]) is None
    assert latency_summary([]) == {"ttft_s": None, "tpot_s": None, "itl_s": None, "e2e_s": None}
    one = summarize([7.0])
    assert one is not None and (one.mean, one.p50, one.p99) == (7.0, 7.0, 7.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RequestTrace(0.0, 0.5, [0.5, 0.6], 0.6, 10, 3), "token_times has 2 times but output_tokens is 3"),
        (lambda: RequestTrace(1.0, 0.5, [0.5], 0.6, 10, 1), "first_token 0.5 is before arrival 1.0"),
        (lambda: RequestTrace(0.0, 0.5, [0.4, 0.6], 0.6, 10, 2), "token_times\\[0\\] = 0.4 must equal first_token"),
        (lambda: RequestTrace(0.0, 0.5, [0.5, 0.7, 0.6], 0.7, 10, 3), "token_times\\[2\\] = 0.6 is before"),
        (lambda: RequestTrace(0.0, 0.5, [0.5, 0.7], 0.6, 10, 2), "finish 0.6 is before its last token"),
        (lambda: RequestTrace(0.0, 0.5, [], 0.6, 10, 0), "output_tokens must be >= 1"),
        (lambda: RequestTrace(math.nan, 0.5, [0.5], 0.6, 10, 1), "arrival must be a finite number"),
        (lambda: RequestTrace(0.0, 0.5, [0.5], math.inf, 10, 1), "finish must be a finite number"),
        (lambda: RequestTrace(0.0, 0.5, [0.5], 0.6, True, 1), "prompt_tokens must be a whole number"),
        (lambda: RequestTrace(0.0, 0.5, [0.5], 0.6, -1, 1), "prompt_tokens must be >= 0"),
        (lambda: RequestTrace(0.0, 0.5, "0.5", 0.6, 10, 1), "token_times must be a list"),  # type: ignore[arg-type]
        (lambda: RequestTrace(0.0, "x", [0.5], 0.6, 10, 1, "r7"), "request 'r7': first_token must be a number"),  # type: ignore[arg-type]
        (lambda: request_latencies([A, (0.0, 1.0)]), "traces\\[1\\] must be a RequestTrace"),  # type: ignore[list-item]
    ],
)
def test_bad_traces_are_refused_naming_the_field(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# --- throughput and goodput ------------------------------------------------------------------------------------


def test_throughput_over_first_arrival_to_last_finish_or_a_given_duration() -> None:
    run = throughput(RUN)
    assert (run.duration_s, run.requests, run.output_tokens) == (approx(2.3), 3, 8)
    assert (run.requests_per_s, run.output_tokens_per_s) == (approx(3 / 2.3), approx(8 / 2.3))
    fixed = throughput(RUN, duration_s=4.0)
    assert (fixed.requests_per_s, fixed.output_tokens_per_s) == (0.75, 2.0)


def test_goodput_counts_requests_meeting_every_given_slo() -> None:
    # TTFT 500/200/300 ms, TPOT 100/350/none ms, E2E 800/900/300 ms
    assert goodput(RUN, ttft_ms=400).good_requests == 2  # A misses
    assert goodput(RUN, tpot_ms=200).good_requests == 2  # B misses; C has no decode and meets it
    both = goodput(RUN, ttft_ms=400, tpot_ms=200)
    assert (both.good_requests, both.requests, both.requests_per_s) == (1, 3, approx(1 / 2.3))
    assert both.slos_ms == {"ttft_ms": 400.0, "tpot_ms": 200.0}
    at_slo = goodput(RUN, e2e_ms=800, duration_s=2.0)  # A's 800 ms is at the SLO: it meets it
    assert (at_slo.good_requests, at_slo.requests_per_s) == (2, 1.0)
    assert goodput(RUN, ttft_ms=1, tpot_ms=1, e2e_ms=1).requests_per_s == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "goodput needs at least one SLO"),
        ({"ttft_ms": 0}, "ttft_ms must be > 0"),
        ({"tpot_ms": -5.0}, "tpot_ms must be > 0"),
        ({"e2e_ms": math.nan}, "e2e_ms must be a finite number"),
        ({"e2e_ms": "fast"}, "e2e_ms must be a number"),
        ({"ttft_ms": 100, "duration_s": 0.0}, "duration_s must be > 0"),
    ],
)
def test_bad_goodput_input_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        goodput(RUN, **kwargs)


def test_throughput_of_no_requests_or_a_zero_length_run_is_refused() -> None:
    with pytest.raises(ValueError, match="traces is empty"):
        throughput([])
    instant = RequestTrace(5.0, 5.0, [5.0], 5.0, 1, 1)
    with pytest.raises(ValueError, match="give duration_s"):
        throughput([instant])
    assert throughput([instant], duration_s=1.0).requests_per_s == 1.0


# --- steady state ----------------------------------------------------------------------------------------------

# Ramp to 4 running by t=4, a one-second dip at 40, last at 4 at t=90, drains from t=100 to empty at 103.
RAMP_PLATEAU_DRAIN = [
    (0.0, 0), (1.0, 1), (2.0, 2), (3.0, 3), (4.0, 4), (40.0, 3), (41.0, 4),
    (90.0, 4), (100.0, 3), (101.0, 2), (102.0, 1), (103.0, 0),
]  # fmt: skip


def test_steady_state_of_a_ramp_plateau_drain_at_max_concurrency() -> None:
    window = steady_state(RAMP_PLATEAU_DRAIN, max_concurrency=4)
    assert (window.start, window.end, window.level) == (4.0, 100.0, 4)
    assert window.duration_s == 96.0
    assert window.fraction_of_run == approx(96 / 103)
    assert window.share_at_level == approx(95 / 96)  # the dip 40..41
    assert window.warnings == ()
    assert "max_concurrency 4" in window.method and "dropped below for good" in window.method


def test_without_a_cap_the_level_is_the_most_running() -> None:
    window = steady_state(RAMP_PLATEAU_DRAIN)
    assert (window.start, window.end, window.level) == (4.0, 100.0, 4)
    assert "max reached 4" in window.method


def test_a_cap_never_reached_falls_back_to_the_most_running_with_a_warning() -> None:
    window = steady_state(RAMP_PLATEAU_DRAIN, max_concurrency=8)
    assert (window.start, window.end, window.level) == (4.0, 100.0, 4)
    assert window.warnings == ("max_concurrency 8 was never reached: the window is at the most running, 4",)


def test_short_windows_and_windows_under_60_percent_of_the_run_warn() -> None:
    tenth = [(t / 10, n) for t, n in RAMP_PLATEAU_DRAIN]
    short = steady_state(tenth, max_concurrency=4)
    assert short.duration_s == approx(9.6)
    assert short.warnings == ("steady state lasts 9.6 s, under 30 s",)
    slow_ramp = steady_state([(0.0, 0), (50.0, 4), (70.0, 4), (80.0, 0)])
    assert (slow_ramp.start, slow_ramp.end) == (50.0, 80.0)  # exactly 30 s: no duration warning
    assert slow_ramp.warnings == ("steady state covers 38% of the run, under 60%",)


def test_a_run_that_ends_at_the_level_closes_the_window_at_its_end() -> None:
    window = steady_state([(0.0, 1), (10.0, 2), (50.0, 2)])
    assert (window.start, window.end, window.level) == (10.0, 50.0, 2)
    assert "never dropped" in window.method


def test_plateau_tolerance_looks_past_a_one_second_peak() -> None:
    spiky = [(0.0, 0), (10.0, 9), (11.0, 10), (12.0, 9), (60.0, 9), (70.0, 0)]
    exact = steady_state(spiky)
    assert (exact.start, exact.end, exact.level) == (11.0, 12.0, 10)
    assert len(exact.warnings) == 2
    tolerant = steady_state(spiky, plateau_tolerance=0.1)
    assert (tolerant.start, tolerant.end, tolerant.level) == (10.0, 70.0, 10)
    assert tolerant.share_at_level == 1.0
    assert tolerant.warnings == ()
    assert "at least 9" in tolerant.method


@pytest.mark.parametrize(
    ("occupancy", "kwargs", "message"),
    [
        ([(0.0, 1)], {}, "at least 2"),
        ([(0.0, 1), (0.0, 2)], {}, "occupancy\\[1\\] time 0.0 is not after"),
        ([(0.0, 1), (1.0, -1)], {}, "occupancy\\[1\\] running must be >= 0"),
        ([(0.0, 1), (1.0, 2.5)], {}, "occupancy\\[1\\] running must be a whole number"),
        ([(0.0, 1), (math.nan, 2)], {}, "occupancy\\[1\\] time must be a finite number"),
        ([(0.0, 1), (1.0,)], {}, "occupancy\\[1\\] must be a \\(time, value\\) pair"),
        ([(0.0, 0), (1.0, 0)], {}, "never has a running request"),
        ([(0.0, 1), (1.0, 2)], {"max_concurrency": 0}, "max_concurrency must be >= 1"),
        ([(0.0, 1), (1.0, 2)], {"plateau_tolerance": 1.0}, "plateau_tolerance must be in \\[0, 1\\)"),
        ([(0.0, 1), (1.0, 2)], {"min_fraction": 1.5}, "min_fraction in \\[0, 1\\]"),
    ],
)
def test_bad_occupancy_is_refused(occupancy: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        steady_state(occupancy, **kwargs)


# --- energy ----------------------------------------------------------------------------------------------------

CONSTANT_100_W = [(0.0, 0.0), (10.0, 1000.0)]


def test_token_share_split_worked_by_hand_on_a_constant_power_counter() -> None:
    steps = [
        EngineStep(1.0, 2.0, {"a": (10, 0), "b": (30, 0)}),  # 100 J: a 10/40, b 30/40
        EngineStep(2.0, 3.0, {"a": (0, 1), "b": (0, 1), "c": (20, 0)}),  # 100 J: 1/22, 1/22, 20/22
    ]
    per_request, check = request_energy(steps, CONSTANT_100_W)
    assert per_request == {"a": approx(25 + 100 / 22), "b": approx(75 + 100 / 22), "c": approx(2000 / 22)}
    assert (check.span_start, check.span_end, check.span_j) == (1.0, 3.0, approx(200.0))
    assert sum(per_request.values()) == approx(check.span_j)
    assert (check.attributed_j, check.gaps_j, check.unattributed_steps_j) == (approx(200.0), approx(0.0), 0.0)
    assert check.ok and abs(check.relative_difference) < 1e-12


def test_prefill_weight_weighs_prefill_tokens_apart_from_decode_tokens() -> None:
    steps = [
        EngineStep(1.0, 2.0, {"a": (10, 0), "b": (30, 0)}),  # all prefill: the weight cancels
        EngineStep(2.0, 3.0, {"a": (0, 1), "b": (0, 1), "c": (20, 0)}),  # shares 1, 1, 10 of 12
    ]
    per_request, check = request_energy(steps, CONSTANT_100_W, prefill_weight=0.5)
    assert per_request == {"a": approx(25 + 100 / 12), "b": approx(75 + 100 / 12), "c": approx(1000 / 12)}
    assert check.ok


def test_the_sum_equals_the_span_energy_on_a_stepped_counter() -> None:
    stepped = [(0.0, 0.0), (5.0, 500.0), (10.0, 2000.0)]  # 100 W, then 300 W from t=5
    steps = [
        EngineStep(4.0, 6.0, {"a": (0, 1), "b": (0, 3)}),  # 100 J + 300 J = 400 J: a 100, b 300
        EngineStep(6.0, 7.0, {"a": (0, 1)}),  # 300 J, all a
    ]
    per_request, check = request_energy(list(reversed(steps)), stepped)  # order of the list does not matter
    assert per_request == {"a": approx(400.0), "b": approx(300.0)}
    assert (check.span_j, check.attributed_j) == (approx(700.0), approx(700.0))
    assert check.ok


def test_a_busy_gap_goes_with_its_step_an_idle_gap_to_no_request_and_tokenless_steps_fail_the_check() -> None:
    # a continues from the first step to the second: the 100 J between them is host work for a
    per_request, busy = request_energy(
        [EngineStep(0.0, 1.0, {"a": (1, 0)}), EngineStep(2.0, 3.0, {"a": (0, 1)})], CONSTANT_100_W
    )
    assert per_request == {"a": approx(300.0)}
    assert (busy.span_j, busy.attributed_j, busy.gaps_j, busy.busy_gaps_j, busy.idle_j) == (
        approx(300.0),
        approx(300.0),
        approx(100.0),
        approx(100.0),
        approx(0.0),
    )
    assert busy.ok
    # a finished in the first step and b arrives later: the engine idled in between, nobody's energy
    per_request, idle = request_energy(
        [EngineStep(0.0, 1.0, {"a": (1, 0)}), EngineStep(2.0, 3.0, {"b": (1, 0)})], CONSTANT_100_W
    )
    assert per_request == {"a": approx(100.0), "b": approx(100.0)}
    assert (idle.idle_j, idle.busy_gaps_j, idle.attributed_j + idle.idle_j) == (approx(100.0), 0.0, approx(300.0))
    assert idle.ok and abs(idle.relative_difference) < 1e-12
    # a step without tokens holds 100 J of 200 J that no request gets
    _, tokenless = request_energy(
        [EngineStep(0.0, 1.0, {"a": (1, 0)}), EngineStep(1.0, 2.0, {"a": (0, 0)})], CONSTANT_100_W
    )
    assert (tokenless.unattributed_steps_j, tokenless.attributed_j, tokenless.span_j) == (
        approx(100.0),
        approx(100.0),
        approx(200.0),
    )
    assert tokenless.relative_difference == approx(-0.5) and not tokenless.ok


@pytest.mark.parametrize(
    ("steps", "counter", "kwargs", "message"),
    [
        ([], CONSTANT_100_W, {}, "steps is empty"),
        ([(0.0, 1.0)], CONSTANT_100_W, {}, "steps\\[0\\] must be an EngineStep"),
        ([EngineStep(0.0, 2.0), EngineStep(1.0, 3.0)], CONSTANT_100_W, {}, "steps overlap"),
        ([EngineStep(9.0, 11.0)], CONSTANT_100_W, {}, "outside the energy counter's samples"),
        ([EngineStep(0.0, 1.0)], [(0.0, 0.0), (1.0, 100.0), (2.0, 5.0)], {}, "counter reset"),
        ([EngineStep(0.0, 1.0)], [(0.0, 0.0), (1.0, 700_000.0)], {}, "not mJ"),
        ([EngineStep(0.0, 1.0)], [(0.0, 0.0)], {}, "counter needs at least 2"),
        ([EngineStep(0.0, 1.0)], [(0.0, 0.0), (0.0, 1.0)], {}, "counter\\[1\\] time 0.0 is not after"),
        ([EngineStep(0.0, 1.0)], [(0.0, 0.0), (1.0, math.nan)], {}, "counter\\[1\\] joules must be a finite"),
        ([EngineStep(0.0, 1.0)], CONSTANT_100_W, {"prefill_weight": 0.0}, "prefill_weight must be in"),
        ([EngineStep(0.0, 1.0)], CONSTANT_100_W, {"prefill_weight": math.nan}, "prefill_weight must be a finite"),
        ([EngineStep(0.0, 1.0)], CONSTANT_100_W, {"tolerance": -0.1}, "tolerance must be in"),
    ],
)
def test_bad_energy_input_is_refused(steps: list, counter: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        request_energy(steps, counter, **kwargs)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EngineStep(2.0, 1.0), "step end 1.0 is before its start 2.0"),
        (lambda: EngineStep(0.0, 1.0, {"a": (1,)}), "tokens\\['a'\\] must be a \\(prefill, decode\\) pair"),  # type: ignore[dict-item]
        (lambda: EngineStep(0.0, 1.0, {"a": (-1, 0)}), "tokens\\['a'\\] prefill must be >= 0"),
        (lambda: EngineStep(0.0, 1.0, {"a": (0, 1.5)}), "tokens\\['a'\\] decode must be a whole number"),  # type: ignore[dict-item]
        (lambda: EngineStep(0.0, 1.0, [("a", (1, 0))]), "step tokens must map"),  # type: ignore[arg-type]
    ],
)
def test_bad_engine_steps_are_refused(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# --- steady-state energy ---------------------------------------------------------------------------------------


def test_steady_state_energy_per_token_and_per_request_in_the_window() -> None:
    # 200 J over [0, 2); A's 4 and B's 3 tokens fall in it, C's at 2.3 does not; A and B finish in it
    result = steady_state_energy(RUN, CONSTANT_100_W, (0.0, 2.0), per_request_j={"a": 30.0, "b": 50.0, "c": 10.0})
    assert (result.energy_j, result.output_tokens, result.requests_finished) == (approx(200.0), 7, 2)
    assert (result.j_per_token, result.tokens_per_j) == (approx(200 / 7), approx(7 / 200))
    assert result.j_per_request == approx(100.0)
    assert (result.requests_inside, result.attributed_j_per_request) == (2, approx(40.0))


def test_steady_state_energy_takes_a_steady_state_and_reports_none_without_tokens() -> None:
    window = SteadyState(5.0, 9.0, 4, "by hand", (), 0.0, 10.0, 1.0)
    empty = steady_state_energy(RUN, CONSTANT_100_W, window)
    assert empty.energy_j == approx(400.0)
    assert (empty.j_per_token, empty.tokens_per_j, empty.j_per_request, empty.attributed_j_per_request) == (None,) * 4


def test_steady_state_energy_from_a_found_window_and_attributed_energies() -> None:
    occupancy = [(0.0, 0), (0.5, 1), (1.2, 2), (1.9, 1), (2.3, 0)]
    window = steady_state(occupancy, min_duration_s=0.0, min_fraction=0.0)
    assert (window.start, window.end, window.level) == (1.2, 1.9, 2)
    steps = [EngineStep(0.0, 1.0, {"a": (10, 3)}), EngineStep(1.0, 2.0, {"a": (0, 1), "b": (5, 2)})]
    per_request, check = request_energy(steps, CONSTANT_100_W)
    assert per_request == {"a": approx(100 + 100 / 8), "b": approx(700 / 8)}
    assert check.ok
    result = steady_state_energy(RUN, CONSTANT_100_W, window, per_request)
    assert result.energy_j == approx(70.0)
    assert result.output_tokens == 2  # B's tokens at 1.2 and 1.3; 1.9 is the window's open end
    assert result.requests_finished == 0 and result.requests_inside == 0  # B finishes at 1.9, outside


@pytest.mark.parametrize(
    ("traces", "window", "per_request", "message"),
    [
        (RUN, (2.0, 2.0), None, "window end 2.0 must be after its start"),
        (RUN, (0.0, 20.0), None, "outside the energy counter's samples"),
        (RUN, (0.0, math.inf), None, "window end must be a finite number"),
        (RUN, (0.0, 2.0), {"a": 1.0}, "request 'b' lies inside the window but has no entry"),
        (RUN, (0.0, 2.0), {"a": 1.0, "b": math.nan}, "per_request_j\\['b'\\] must be a finite"),
        ([trace(0.0, [0.5], 0.5)], (0.0, 2.0), {"a": 1.0}, "request None lies inside the window"),
        ([A, "B"], (0.0, 2.0), None, "traces\\[1\\] must be a RequestTrace"),
    ],
)
def test_bad_steady_state_energy_input_is_refused(
    traces: list, window: tuple, per_request: dict | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        steady_state_energy(traces, CONSTANT_100_W, window, per_request)


def test_an_arrival_bound_run_is_steady_from_its_median_level_until_the_last_arrival() -> None:
    # Arrivals from 0 to 10 s; the engine runs 1, then mostly 3 (one spike of 9), then drains after 10 s.
    occupancy = [(0.0, 1), (1.0, 3), (4.0, 9), (4.2, 3), (10.0, 2), (11.0, 1), (12.0, 0)]
    arrivals = [0.0, 0.5, 1.0, 4.0, 6.0, 10.0]
    window = steady_state(occupancy, max_concurrency=64, arrivals=arrivals, min_duration_s=5)
    # time-weighted counts while arriving: 1 for 1 s, 3 for 3 s + 5.8 s, 9 for 0.2 s: the median is 3
    assert (window.level, window.start, window.end) == (3, 1.0, 10.0)
    assert "median running while requests arrive" in window.method and window.warnings == ()
    # the peak alone (the rule for a saturated run) would give a 0.2 s window
    peak = steady_state(occupancy, min_duration_s=5)
    assert (peak.level, peak.start, peak.end) == (9, 4.0, 4.2)
    # a run that reaches its cap keeps the cap's rule even with arrivals given
    capped = steady_state(occupancy, max_concurrency=3, arrivals=arrivals, min_duration_s=5)
    assert (capped.level, capped.start, capped.end) == (3, 1.0, 10.0)
    assert capped.method.startswith("level = max_concurrency 3")
