"""Grams CO2e from energy and a grid carbon intensity the user gives: a constant or a CSV time series.

Nothing is fetched. A series is step-wise: each point's intensity holds from its time until the next point's time,
so the series covers [first time, last time] and the last point only marks the end of that span. A window outside
the span is an error, never an extrapolation. Power is taken as constant over a window, so the intensity used is
the time-average of the step function over the window.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

J_PER_KWH = 3.6e6
MAX_G_PER_KWH = 2000.0  # above any real grid (coal alone is ~1000 g/kWh): likely a unit mistake
MAX_ENERGY_J = 1e12  # ~278 MWh, far beyond any measured run
MAX_CSV_BYTES = 16 * 1024 * 1024  # a year at 1-minute resolution fits comfortably
EARLIEST_UNIX_S = 946_684_800.0  # 2000-01-01T00:00Z
LATEST_UNIX_S = 4_102_444_800.0  # 2100-01-01T00:00Z

TIME_COLUMNS = ("timestamp", "time", "datetime", "unix_s")
INTENSITY_COLUMNS = ("g_per_kwh", "gco2_per_kwh", "gco2e_per_kwh", "carbon_intensity", "intensity")

Instant = float | datetime  # Unix seconds, or a timezone-aware datetime


@dataclass(frozen=True)
class CarbonEstimate:
    """Grams CO2e of ``energy_j`` at ``g_per_kwh`` (the mean intensity over the window), with the intensity's source."""

    grams: float
    g_per_kwh: float
    energy_j: float
    source: str


def _format_instant(unix_s: float) -> str:
    moment = datetime.fromtimestamp(unix_s, tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if moment.second:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def _format_span(start: float, end: float) -> str:
    return f"{_format_instant(start)}..{_format_instant(end)}"


def _check_unix_s(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what}: time {value} is not finite; give Unix seconds or an ISO 8601 time with a timezone")
    if not EARLIEST_UNIX_S <= value <= LATEST_UNIX_S:
        hint = " (milliseconds? divide by 1000)" if value > LATEST_UNIX_S else ""
        raise ValueError(
            f"{what}: Unix time {value:g} is outside 2000..2100{hint}; give Unix seconds or an ISO 8601 time "
            "with a timezone"
        )
    return value


def _to_unix_s(instant: Instant, what: str) -> float:
    if isinstance(instant, datetime):
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"{what}: datetime {instant.isoformat()} has no timezone; give an aware datetime (UTC)")
        return _check_unix_s(instant.timestamp(), what)
    if isinstance(instant, bool) or not isinstance(instant, int | float):
        raise ValueError(f"{what}: expected Unix seconds or a timezone-aware datetime, got {type(instant).__name__}")
    return _check_unix_s(float(instant), what)


def _check_intensity(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: intensity must be a number in g/kWh, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: intensity {value} is not a finite number; give g CO2e per kWh")
    if value < 0:
        raise ValueError(f"{what}: intensity {value:g} g/kWh is negative; give g CO2e per kWh (0 or more)")
    if value > MAX_G_PER_KWH:
        raise ValueError(
            f"{what}: intensity {value:g} g/kWh is above {MAX_G_PER_KWH:g}, beyond any real grid; "
            "check the unit (g CO2e per kWh, not per MWh or in mg)"
        )
    return value


@dataclass(frozen=True)
class CarbonIntensity:
    """A grid carbon intensity in g CO2e/kWh: a constant (``constant_g_per_kwh``) or a step-wise series
    (``times`` in Unix seconds, strictly increasing, with ``values``), labelled with its ``source``.
    Build one with :meth:`constant`, :meth:`series` or :func:`load_intensity_csv`."""

    source: str
    constant_g_per_kwh: float | None = None
    times: tuple[float, ...] = ()
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("carbon intensity: source must name where the intensity comes from")
        if self.constant_g_per_kwh is not None:
            if self.times or self.values:
                raise ValueError("carbon intensity: give either a constant or a series, not both")
            object.__setattr__(
                self, "constant_g_per_kwh", _check_intensity(self.constant_g_per_kwh, "carbon.g_per_kwh")
            )
            return
        if not self.times:
            raise ValueError("carbon intensity: the series has no points; give at least one (time, g/kWh) point")
        if len(self.times) != len(self.values):
            raise ValueError(f"carbon intensity: {len(self.times)} times but {len(self.values)} values")
        where = [f"carbon intensity point {index}" for index in range(len(self.times))]
        object.__setattr__(self, "times", tuple(_to_unix_s(at, w) for at, w in zip(self.times, where, strict=True)))
        object.__setattr__(
            self, "values", tuple(_check_intensity(v, w) for v, w in zip(self.values, where, strict=True))
        )
        for index in range(1, len(self.times)):
            if self.times[index] <= self.times[index - 1]:
                raise ValueError(
                    f"carbon intensity: point {index} at {_format_instant(self.times[index])} is not after point "
                    f"{index - 1} at {_format_instant(self.times[index - 1])}; times must be sorted and unique"
                )

    @classmethod
    def constant(cls, g_per_kwh: float, label: str | None = None) -> CarbonIntensity:
        """A constant intensity, e.g. ``carbon.g_per_kwh: 412`` gives source "constant 412 g/kWh"."""
        value = _check_intensity(g_per_kwh, "carbon.g_per_kwh")
        source = f"constant {value:g} g/kWh"
        return cls(source=f"{label}: {source}" if label else source, constant_g_per_kwh=value)

    @classmethod
    def series(cls, points: Sequence[tuple[Instant, float]], source: str) -> CarbonIntensity:
        """A step-wise series from (time, g/kWh) points in time order; ``source`` labels where they come from."""
        if not points:
            raise ValueError("carbon intensity: the series has no points; give at least one (time, g/kWh) point")
        times = tuple(_to_unix_s(at, f"carbon intensity point {index}") for index, (at, _) in enumerate(points))
        return cls(source=source, times=times, values=tuple(value for _, value in points))

    @property
    def is_series(self) -> bool:
        return self.constant_g_per_kwh is None

    @property
    def span(self) -> tuple[float, float] | None:
        """(first, last) time of a series in Unix seconds; None for a constant, which covers all time."""
        return (self.times[0], self.times[-1]) if self.is_series else None

    def mean_g_per_kwh(self, start: Instant | None = None, end: Instant | None = None) -> float:
        """The time-averaged intensity over [start, end] (the constant itself for a constant). A series needs both
        ends inside its span; a zero-length window gives the intensity in effect at that instant."""
        if self.constant_g_per_kwh is not None:
            if start is not None and end is not None:
                self._window(start, end)
            return self.constant_g_per_kwh
        if start is None or end is None:
            raise ValueError(
                f"carbon intensity: {self.source} is a time series; give the window's start and end to average it over"
            )
        window_start, window_end = self._window(start, end)
        first, last = self.times[0], self.times[-1]
        if window_start < first or window_end > last:
            raise ValueError(
                f"carbon intensity: window {_format_span(window_start, window_end)} is outside the series' span "
                f"{_format_span(first, last)} ({self.source}); give a series that covers the whole run "
                "or a constant carbon.g_per_kwh"
            )
        if window_end == window_start:
            in_effect = max(index for index, at in enumerate(self.times) if at <= window_start)
            return self.values[in_effect]
        weighted = 0.0
        for index in range(len(self.times) - 1):
            overlap = min(self.times[index + 1], window_end) - max(self.times[index], window_start)
            if overlap > 0:
                weighted += self.values[index] * overlap
        return weighted / (window_end - window_start)

    def grams(self, energy_j: float, start: Instant | None = None, end: Instant | None = None) -> CarbonEstimate:
        """Grams CO2e of ``energy_j`` joules spent over [start, end] at constant power (1 kWh = 3.6e6 J)."""
        if isinstance(energy_j, bool) or not isinstance(energy_j, int | float):
            raise ValueError(f"energy_j: expected a number of joules, got {type(energy_j).__name__}")
        if not math.isfinite(energy_j) or not 0 <= energy_j <= MAX_ENERGY_J:
            raise ValueError(f"energy_j: {energy_j} J must be finite and within 0..{MAX_ENERGY_J:g} J")
        intensity = self.mean_g_per_kwh(start, end)
        return CarbonEstimate(
            grams=float(energy_j) / J_PER_KWH * intensity,
            g_per_kwh=intensity,
            energy_j=float(energy_j),
            source=self.source,
        )

    @staticmethod
    def _window(start: Instant, end: Instant) -> tuple[float, float]:
        window_start, window_end = _to_unix_s(start, "window start"), _to_unix_s(end, "window end")
        if window_end < window_start:
            raise ValueError(
                f"window: end {_format_instant(window_end)} is before start {_format_instant(window_start)}; "
                "give start <= end"
            )
        return window_start, window_end


def _pick_column(
    header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, parameter: str, where: str
) -> int:
    names = [name.strip().lower() for name in header]
    if wanted is not None:
        if wanted.strip().lower() not in names:
            raise ValueError(f"{where}: no {what} column {wanted!r} in the header {header}; name an existing one")
        return names.index(wanted.strip().lower())
    found = [index for index, name in enumerate(names) if name in candidates]
    if not found:
        raise ValueError(
            f"{where}: missing the {what} column; the header {header} has none of {list(candidates)} "
            f"(a header row is required, e.g. 'timestamp,g_per_kwh'; or pass {parameter}= to name it)"
        )
    if len(found) > 1:
        raise ValueError(
            f"{where}: several {what} columns {[header[index] for index in found]}; pass {parameter}= to pick one"
        )
    return found[0]


def _parse_time(text: str, where: str) -> float:
    cell = text.strip()
    try:
        unix_s = float(cell)
    except ValueError:
        pass
    else:
        return _check_unix_s(unix_s, where)
    try:
        moment = datetime.fromisoformat(cell)
    except ValueError:
        raise ValueError(
            f"{where}: cannot parse time {cell!r}; give ISO 8601 with a timezone (2026-11-30T00:00Z, "
            "2026-11-30T01:00+01:00) or Unix seconds"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{where}: time {cell!r} has no timezone; append Z (UTC) or an offset such as +01:00")
    return _check_unix_s(moment.timestamp(), where)


def _parse_intensity(text: str, where: str) -> float:
    cell = text.strip()
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{where}: cannot parse intensity {cell!r}; give a number of g CO2e per kWh") from None
    return _check_intensity(value, where)


def load_intensity_csv(
    path: str | os.PathLike[str],
    *,
    time_column: str | None = None,
    intensity_column: str | None = None,
    label: str | None = None,
) -> CarbonIntensity:
    """A step-wise series from a CSV with a header row: a time column (ISO 8601 with a timezone, or Unix seconds;
    named one of TIME_COLUMNS unless ``time_column`` says) and a g/kWh column (one of INTENSITY_COLUMNS unless
    ``intensity_column`` says); other columns are ignored. Rows must be in strictly increasing time order."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError as error:
        raise ValueError(f"{file}: cannot read the carbon intensity CSV ({error.strerror}); check the path") from None
    if size > MAX_CSV_BYTES:
        raise ValueError(
            f"{file}: {size} bytes is over the {MAX_CSV_BYTES} byte limit for a carbon intensity CSV; "
            "cut it to the period of the runs"
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not UTF-8 text; save the carbon intensity CSV as UTF-8") from None
    except OSError as error:
        raise ValueError(f"{file}: cannot read the carbon intensity CSV ({error.strerror}); check the path") from None

    rows = csv.reader(text.splitlines())
    header = next((row for row in rows if any(cell.strip() for cell in row)), None)
    if header is None:
        raise ValueError(f"{file}: empty; give a header row (e.g. 'timestamp,g_per_kwh') and at least one data row")
    where_header = f"{file} line {rows.line_num}"
    time_index = _pick_column(header, time_column, TIME_COLUMNS, "time", "time_column", where_header)
    intensity_index = _pick_column(
        header, intensity_column, INTENSITY_COLUMNS, "g/kWh", "intensity_column", where_header
    )

    times: list[float] = []
    values: list[float] = []
    time_lines: list[int] = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{file} line {rows.line_num}"
        if len(row) <= max(time_index, intensity_index):
            raise ValueError(f"{where}: {len(row)} cells but the header has {len(header)}; fill in every column")
        at = _parse_time(row[time_index], where)
        if times and at <= times[-1]:
            problem = "duplicates" if at == times[-1] else "is before"
            raise ValueError(
                f"{where}: time {_format_instant(at)} {problem} line {time_lines[-1]}'s "
                f"{_format_instant(times[-1])}; sort the rows by time and remove duplicates"
            )
        times.append(at)
        values.append(_parse_intensity(row[intensity_index], where))
        time_lines.append(rows.line_num)
    if not times:
        raise ValueError(f"{file}: no data rows after the header; give at least one (time, g/kWh) row")
    points = "point" if len(times) == 1 else "points"
    source = f"csv {file.name} ({len(times)} {points}, {_format_span(times[0], times[-1])})"
    return CarbonIntensity(source=f"{label}: {source}" if label else source, times=tuple(times), values=tuple(values))
