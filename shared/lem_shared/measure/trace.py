"""Telemetry and window files for offline analysis (the format of ../shared/data/h200: one JSON object a line)."""

from __future__ import annotations

import json
from pathlib import Path

from lem_shared.measure.analysis import TelemetrySample


class TraceError(ValueError):
    """A trace or windows file that cannot be read; the message names the file, the line and the field."""


def _lines(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TraceError(f"{path}:{number}: each line must be a JSON object")
        records.append((number, record))
    return records


# A power reading above this is no GPU's (the H200's limit is 700 W; transients reach ~900 W).
MAX_POWER_MW = 10_000_000


def _watts(record: dict, key: str) -> float | None:
    """A power field in mW as watts; a value that is not a finite number in [0, 10 kW] names the field."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_POWER_MW:
        raise ValueError(f"'{key}': {value!r} is not a power in mW between 0 and {MAX_POWER_MW}")
    return value / 1000


def read_trace(path: str | Path) -> list[TelemetrySample]:
    """Samples with ``t`` (Unix s), ``power_mw`` (NVML's averaged power), ``energy_mj``, and optionally
    ``power_instant_mw``, ``temp_c``, ``sm_mhz``, ``reasons``, ``util_gpu``, sorted by time."""
    path = Path(path)
    samples = []
    for number, r in _lines(path):
        try:
            samples.append(
                TelemetrySample(
                    t=float(r["t"]),
                    power_w=_watts(r, "power_mw"),
                    energy_mj=int(r["energy_mj"]) if r.get("energy_mj") is not None else None,
                    temperature_c=r.get("temp_c"),
                    sm_clock_mhz=r.get("sm_mhz"),
                    clock_event_reasons=r.get("reasons"),
                    utilization_gpu=r.get("util_gpu"),
                    power_instant_w=_watts(r, "power_instant_mw"),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{path}:{number}: bad or missing field {exc}") from None
    if not samples:
        raise TraceError(f"{path}: no samples")
    return sorted(samples, key=lambda s: s.t)


def read_windows(path: str | Path) -> list[tuple[str, float, float]]:
    """Windows ``{"name": ..., "start": unix_s, "end": unix_s}``, one a line."""
    path = Path(path)
    windows = []
    for number, r in _lines(path):
        try:
            name, start, end = str(r["name"]), float(r["start"]), float(r["end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(
                f"{path}:{number}: bad or missing field {exc}: a windows file has one "
                f'{{"name": ..., "start": unix_s, "end": unix_s}} a line'
                + (' (this looks like a marks file, {"t", "mark"} a line)' if "mark" in r else "")
            ) from None
        if end <= start:
            raise TraceError(f"{path}:{number}: end must be after start")
        windows.append((name, start, end))
    return windows
