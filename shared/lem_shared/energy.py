"""Window energy from NVML samples: the energy-counter difference (the figure) and integrated power (the check).

The counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ) updates about every 100 ms on an H200; the power
field is a ~1 s average that lags ramps (DESIGN §6). So the counter is the primary figure: its difference
between the first sample at or after the window's start and the last one at or before its end, scaled from
the span those samples cover to the whole window. Without the scaling, a 100 ms sampling interval would lose
about one interval of energy per window (-1 % on a 10 s window); with it, the estimate is unbiased and within
one counter update of the truth. Counter resets (a value lower than the one before) restart the accumulation.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    t: float  # Unix seconds
    energy_mj: int | None
    power_w: float | None


@dataclass(frozen=True)
class WindowEnergy:
    energy_j: float | None
    power_integral_j: float | None
    mean_power_w: float | None
    samples_in_window: int
    counter_updates: int
    counter_resets: int
    note: str | None  # why energy_j is None, or a caveat


def _interpolate(ts: list[float], ys: list[float], x: float) -> float:
    i = bisect.bisect_left(ts, x)
    if i < len(ts) and ts[i] == x:
        return ys[i]
    t0, t1, y0, y1 = ts[i - 1], ts[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - t0) / (t1 - t0)


def counter_energy(samples: list[Sample], start: float, end: float) -> tuple[float | None, int, int]:
    """(joules, counter updates, counter resets) over [start, end] from the counter samples inside it."""
    inside = [s for s in samples if s.energy_mj is not None and start <= s.t <= end]
    if len(inside) < 2 or inside[-1].t <= inside[0].t:
        return None, 0, 0
    total_mj, updates, resets = 0, 0, 0
    for before, after in zip(inside, inside[1:], strict=False):
        assert before.energy_mj is not None and after.energy_mj is not None
        if after.energy_mj != before.energy_mj:
            updates += 1
        if after.energy_mj >= before.energy_mj:
            total_mj += after.energy_mj - before.energy_mj
        else:
            resets += 1
            total_mj += after.energy_mj
    covered = inside[-1].t - inside[0].t
    return total_mj / 1000.0 * (end - start) / covered, updates, resets


def power_integral(samples: list[Sample], start: float, end: float) -> float | None:
    """Trapezoidal ∫P dt over [start, end], power interpolated at the edges; None without samples around both."""
    powered = [s for s in samples if s.power_w is not None]
    if not powered or powered[0].t > start or powered[-1].t < end:
        return None
    ts = [s.t for s in powered]
    ps: list[float] = [s.power_w for s in powered]  # type: ignore[misc]
    points = [(start, _interpolate(ts, ps, start))]
    points += [(t, p) for t, p in zip(ts, ps, strict=True) if start < t < end]
    points.append((end, _interpolate(ts, ps, end)))
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False))


def window_energy(samples: list[Sample], start: float, end: float) -> WindowEnergy:
    """Energy of the window [start, end] from time-ordered samples (ideally reaching a little past both edges)."""
    if end <= start:
        return WindowEnergy(None, None, None, 0, 0, 0, "empty measurement window")
    inside = sum(1 for s in samples if start <= s.t <= end)
    energy, updates, resets = counter_energy(samples, start, end)
    integral = power_integral(samples, start, end)
    if energy is None:
        note = "no energy-counter readings inside the window" if inside else "no telemetry samples inside the window"
    elif integral is None:
        note = "the samples do not reach past both edges of the window: no power integral"
    else:
        note = None
    reference = energy if energy is not None else integral
    mean_power = reference / (end - start) if reference is not None else None
    return WindowEnergy(energy, integral, mean_power, inside, updates, resets, note)
