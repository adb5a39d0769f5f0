"""Window energy from NVML: the energy-counter difference (the figure) and integrated power (the check).

The counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ) updates about every 100 ms on an H200. Its best
reading of a window is the difference of the reads the engine host takes at the window's exact edges
(``edge_energy``). Telemetry's samples give a second, independent one: the difference between the first sample
at or after the window's start and the last one at or before its end, scaled from the span those samples cover
to the whole window (unbiased, within one counter update at each edge). Counter resets (a value lower than the
one before) restart the accumulation.

Power comes in two readings: ``power_w`` (``nvmlDeviceGetPowerUsage``, a ~1 s average on Ampere and newer, which
lags every ramp) and ``power_instant_w`` (the instantaneous field, where the GPU has it). ∫P dt uses the
instantaneous reading when it covers the window, else the average, and says which.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    t: float  # Unix seconds
    energy_mj: int | None
    power_w: float | None  # NVML's power usage: a ~1 s average on Ampere and newer
    power_instant_w: float | None = None


POWER_SOURCES = {"instant": "power_instant_w", "average": "power_w"}


@dataclass(frozen=True)
class WindowEnergy:
    energy_j: float | None
    power_integral_j: float | None
    mean_power_w: float | None
    samples_in_window: int
    counter_updates: int
    counter_resets: int
    note: str | None  # why energy_j is None, or a caveat
    power_source: str | None = None  # "instant" or "average": the reading ∫P dt used


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


def _powered(samples: list[Sample], source: str) -> list[tuple[float, float]]:
    attribute = POWER_SOURCES[source]
    return [(s.t, p) for s in samples if (p := getattr(s, attribute)) is not None]


def integral_source(samples: list[Sample], start: float, end: float) -> str | None:
    """The power reading that reaches past both edges of [start, end]: instantaneous first, else the average."""
    for source in POWER_SOURCES:
        powered = _powered(samples, source)
        if powered and powered[0][0] <= start and powered[-1][0] >= end:
            return source
    return None


def power_integral(samples: list[Sample], start: float, end: float, source: str = "average") -> float | None:
    """Trapezoidal ∫P dt over [start, end] from one power reading (``instant`` or ``average``), interpolated at
    the edges; None without samples around both."""
    powered = _powered(samples, source)
    if not powered or powered[0][0] > start or powered[-1][0] < end:
        return None
    ts = [t for t, _ in powered]
    ps = [p for _, p in powered]
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
    source = integral_source(samples, start, end)
    integral = power_integral(samples, start, end, source) if source else None
    if energy is None:
        note = "no energy-counter readings inside the window" if inside else "no telemetry samples inside the window"
    elif integral is None:
        note = "the samples do not reach past both edges of the window: no power integral"
    else:
        note = None
    reference = energy if energy is not None else integral
    mean_power = reference / (end - start) if reference is not None else None
    return WindowEnergy(energy, integral, mean_power, inside, updates, resets, note, source)


def edge_energy(edges: dict[str, Any] | None, gpu_uuid: str) -> tuple[float | None, str | None]:
    """(joules, why None) of one GPU from the counter reads at a window's edges (``WindowEdges`` as JSON)."""
    if not edges:
        return None, "no counter reads at the window's edges"
    start = (edges["start"]["gpus"].get(gpu_uuid) or {}).get("energy_mj")
    end = (edges["end"]["gpus"].get(gpu_uuid) or {}).get("energy_mj")
    if start is None or end is None:
        return None, f"no energy counter read for {gpu_uuid} at both edges"
    if end < start:  # two reads cannot bridge a reset: telemetry's samples can
        return None, "the energy counter reset inside the window"
    return (end - start) / 1000.0, None
