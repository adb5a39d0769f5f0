"""Percentiles, and confidence intervals across cycles: a seeded percentile bootstrap, vectorised with numpy.
Pure functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

PERCENTILE_BOOTSTRAP = "percentile bootstrap"
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
MIN_VALUES = 2  # below this there is no interval
RELIABLE_VALUES = 3  # below this the interval comes with a warning
FEW_VALUES_WARNING = "fewer than 3 cycles: the interval is unreliable"

# A statistic takes a 2-D array and reduces each row (axis=1), like numpy.mean.
Statistic = Callable[..., Any]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval; ``low``/``high`` are None with ``reason`` when there is none."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int
    resamples: int
    seed: int
    confidence: float
    method: str = PERCENTILE_BOOTSTRAP
    warning: str | None = None
    reason: str | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(
    values: Iterable[float | None],
    statistic: Statistic = np.mean,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (None values are left out).

    Draws a ``resamples`` x n matrix of indices from ``numpy.random.default_rng(seed)``, applies the statistic to
    every row at once and takes the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the results. The same
    seed and values always give the same interval. Fewer than 2 values: no interval (``reason`` says so); fewer
    than 3: an interval with ``warning`` set.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1 (got {resamples})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (got {confidence})")
    sample = np.asarray([float(v) for v in values if v is not None], dtype=float)
    n = int(sample.size)
    interval = partial(Interval, n=n, resamples=resamples, seed=seed, confidence=confidence)
    if n == 0:
        return interval(estimate=None, low=None, high=None, reason="no values")
    estimate = float(statistic(sample[np.newaxis, :], axis=1)[0])
    if n < MIN_VALUES:
        return interval(estimate=estimate, low=None, high=None, reason=f"fewer than {MIN_VALUES} values: no interval")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    replicates = np.asarray(statistic(sample[indices], axis=1), dtype=float)
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    warning = FEW_VALUES_WARNING if n < RELIABLE_VALUES else None
    return interval(estimate=estimate, low=float(low), high=float(high), warning=warning)


def ci_text(metric: dict[str, Any], spec: str, scale: float = 1.0, sep: str = " ") -> str:
    """``mean [low, high]`` of a ``{"mean", "ci_low", "ci_high"}`` figure, scaled and formatted with ``spec``;
    ``n/a`` without a mean, ``(no CI)`` without an interval."""
    if metric["mean"] is None:
        return "n/a"
    text = format(metric["mean"] * scale, spec)
    if metric["ci_low"] is None or metric["ci_high"] is None:
        return f"{text} (no CI)"
    return f"{text}{sep}[{metric['ci_low'] * scale:{spec}}, {metric['ci_high'] * scale:{spec}}]"
