"""Request arrival times for serving runs: a seeded Poisson process, or gamma gaps with a burstiness factor as
`vllm bench serve` draws them (shape = burstiness, scale = 1 / (rate * burstiness)), or all at once at rate inf.

The first request arrives at 0 and each later one after one drawn gap, as `vllm bench serve` sends its first
request at once and then sleeps before each next one."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

MAX_COUNT = 10_000_000


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} is NaN: give a number")
    return number


def _count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, Integral):
        raise ValueError(f"count must be a whole number of requests, got {count!r} ({type(count).__name__})")
    if not 1 <= int(count) <= MAX_COUNT:
        raise ValueError(f"count must be between 1 and {MAX_COUNT:,} requests, got {count}")
    return int(count)


def arrival_times(count: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """``count`` arrival times in seconds from 0, non-decreasing; the first is 0.

    ``rate`` is the mean request rate in req/s (``math.inf``: every request at 0). ``burstiness`` is the gamma
    shape: 1.0 is a Poisson process (exponential gaps), below 1 burstier, above 1 more even; the gaps' mean is
    1 / rate whatever the burstiness, their coefficient of variation 1 / sqrt(burstiness). The same seed gives
    the same times."""
    n = _count(count)
    rate_value = _real("rate", rate)
    if rate_value <= 0:
        raise ValueError(f"rate must be > 0 requests/s (or inf for all at once), got {rate_value}")
    shape = _real("burstiness", burstiness)
    if not 0 < shape < math.inf:
        raise ValueError(f"burstiness must be a finite number > 0 (1.0 = Poisson), got {shape}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    if math.isinf(rate_value):
        return [0.0] * n
    scale = 1.0 / (rate_value * shape)
    if not math.isfinite(scale):
        raise ValueError(f"rate * burstiness = {rate_value * shape:g} is too small to draw gaps from: raise the rate")
    gaps = np.random.default_rng(int(seed)).gamma(shape, scale, size=n - 1)
    times = np.concatenate(([0.0], np.cumsum(gaps)))
    if not np.isfinite(times[-1]):
        raise ValueError(f"rate {rate_value:g} req/s over {n} requests gives arrival times past float range")
    return [float(t) for t in times]
