"""Arrival times of serving runs: Poisson and gamma gaps, seeding, all-at-once, and refused input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lem_shared.workload.arrivals import arrival_times


def gaps(times: list[float]) -> np.ndarray:
    return np.diff(np.asarray(times))


def test_first_request_arrives_at_zero_and_times_never_go_back() -> None:
    times = arrival_times(50, rate=3.0, seed=7)
    assert len(times) == 50
    assert times[0] == 0.0
    assert all(later >= earlier for earlier, later in zip(times, times[1:], strict=False))
    assert arrival_times(1, rate=3.0) == [0.0]


def test_poisson_mean_gap_is_one_over_the_rate_and_its_cv_is_one() -> None:
    drawn = gaps(arrival_times(20_001, rate=4.0, seed=1))
    assert len(drawn) == 20_000
    assert drawn.mean() == pytest.approx(0.25, rel=0.02)
    assert drawn.std() / drawn.mean() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_gaps_keep_the_mean_and_have_cv_one_over_sqrt_burstiness(burstiness: float) -> None:
    drawn = gaps(arrival_times(20_001, rate=10.0, burstiness=burstiness, seed=3))
    assert drawn.mean() == pytest.approx(0.1, rel=0.02)
    assert drawn.std() / drawn.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_the_same_seed_gives_the_same_times_and_another_seed_others() -> None:
    assert arrival_times(100, rate=2.0, burstiness=0.5, seed=11) == arrival_times(100, 2.0, 0.5, 11)
    assert arrival_times(100, rate=2.0, seed=11) != arrival_times(100, rate=2.0, seed=12)


def test_doubling_the_rate_halves_every_time_for_the_same_draws() -> None:
    slow = np.asarray(arrival_times(200, rate=1.0, seed=5))
    fast = np.asarray(arrival_times(200, rate=2.0, seed=5))
    np.testing.assert_allclose(fast, slow / 2, rtol=1e-12)


def test_an_infinite_rate_sends_every_request_at_once() -> None:
    assert arrival_times(4, rate=math.inf) == [0.0, 0.0, 0.0, 0.0]
    assert arrival_times(3, rate=float("inf"), burstiness=0.2, seed=9) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0, "rate": 1.0}, "count must be between 1"),
        ({"count": -3, "rate": 1.0}, "count must be between 1"),
        ({"count": 2.5, "rate": 1.0}, "count must be a whole number"),
        ({"count": True, "rate": 1.0}, "count must be a whole number"),
        ({"count": 10**9, "rate": 1.0}, "count must be between 1"),
        ({"count": 5, "rate": 0.0}, "rate must be > 0"),
        ({"count": 5, "rate": -2.0}, "rate must be > 0"),
        ({"count": 5, "rate": -math.inf}, "rate must be > 0"),
        ({"count": 5, "rate": math.nan}, "rate is NaN"),
        ({"count": 5, "rate": "4"}, "rate must be a number"),
        ({"count": 5, "rate": 1e-320}, "too small"),
        ({"count": 5, "rate": 1.0, "burstiness": 0.0}, "burstiness must be a finite number > 0"),
        ({"count": 5, "rate": 1.0, "burstiness": -1.0}, "burstiness must be a finite number > 0"),
        ({"count": 5, "rate": 1.0, "burstiness": math.inf}, "burstiness must be a finite number > 0"),
        ({"count": 5, "rate": 1.0, "burstiness": math.nan}, "burstiness is NaN"),
        ({"count": 5, "rate": 1.0, "seed": -1}, "seed must be a whole number >= 0"),
        ({"count": 5, "rate": 1.0, "seed": 1.5}, "seed must be a whole number >= 0"),
    ],
)
def test_bad_input_is_refused_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        arrival_times(**kwargs)
