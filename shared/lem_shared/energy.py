"""Window energy from NVML samples: the energy-counter difference (the figure) and integrated power (the check).

The counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ) updates about every 100 ms on an H200; the power
field is a ~1 s average that lags ramps (DESIGN §6). So the counter is the primary figure, read at the window
edges by linear interpolation between the samples that bracket each edge, and counter resets (a value lower
than the one before) are handled by restarting the accumulation from the new value.
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
    note: str | None  # why energy_j is None, or a caveat


def _interpolate(ts: list[float], ys: list[float], x: float) -> float:
    i = bisect.bisect_left(ts, x)
    if i < len(ts) and ts[i] == x:
        return ys[i]
    t0, t1, y0, y1 = ts[i - 1], ts[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - t0) / (t1 - t0)


def _cumulative_counter_j(values_mj: list[int]) -> list[float]:
    total, out = 0.0, [0.0]
    for before, after in zip(values_mj, values_mj[1:], strict=False):
        total += (after - before if after >= before else after) / 1000.0
        out.append(total)
    return out


def window_energy(samples: list[Sample], start: float, end: float) -> WindowEnergy:
    """Energy of the window [start, end] from samples sorted by time that must bracket both edges."""
    if end <= start:
        return WindowEnergy(None, None, None, 0, "empty measurement window")
    if not samples or samples[0].t > start or samples[-1].t < end:
        return WindowEnergy(None, None, None, 0, "telemetry samples do not cover the measurement window")
    inside = sum(1 for s in samples if start <= s.t <= end)

    counted = [s for s in samples if s.energy_mj is not None]
    energy = None
    note = None
    if counted and counted[0].t <= start and counted[-1].t >= end:
        ts = [s.t for s in counted]
        cumulative = _cumulative_counter_j([s.energy_mj for s in counted])  # type: ignore[misc]
        energy = _interpolate(ts, cumulative, end) - _interpolate(ts, cumulative, start)
    else:
        note = "this GPU reports no energy counter over the window"

    powered = [s for s in samples if s.power_w is not None]
    integral = None
    if powered and powered[0].t <= start and powered[-1].t >= end:
        ts = [s.t for s in powered]
        ps = [s.power_w for s in powered]
        edge_start, edge_end = _interpolate(ts, ps, start), _interpolate(ts, ps, end)  # type: ignore[arg-type]
        points = [(start, edge_start)] + [(t, p) for t, p in zip(ts, ps, strict=True) if start < t < end]
        points.append((end, edge_end))
        integral = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False))

    reference = energy if energy is not None else integral
    mean_power = reference / (end - start) if reference is not None else None
    return WindowEnergy(energy, integral, mean_power, inside, note)
