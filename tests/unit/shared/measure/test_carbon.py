"""Carbon from a user-given grid intensity: hand-worked grams, step-wise series averages, the CSV loader and its
errors, and the source labels."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from lem_shared.measure.carbon import MAX_CSV_BYTES, CarbonIntensity, load_intensity_csv

MIDNIGHT = datetime(2026, 11, 30, tzinfo=UTC)  # 1795996800 Unix seconds
MIDNIGHT_S = 1_795_996_800.0


def at(minutes: float) -> datetime:
    return MIDNIGHT + timedelta(minutes=minutes)


def write(tmp_path: Path, text: str, name: str = "grid.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# 100 g/kWh from 00:00, 300 from 01:00; the 02:00 point only ends the span.
STEPS = CarbonIntensity.series([(at(0), 100.0), (at(60), 300.0), (at(120), 500.0)], source="test steps")


def test_constant_400_g_per_kwh_on_one_kwh_is_400_grams() -> None:
    estimate = CarbonIntensity.constant(400).grams(3.6e6)
    assert estimate.grams == pytest.approx(400.0)
    assert estimate.g_per_kwh == 400.0 and estimate.energy_j == 3.6e6
    assert estimate.source == "constant 400 g/kWh"


def test_constant_ignores_the_window_but_still_checks_it() -> None:
    intensity = CarbonIntensity.constant(412, label="grid operator 2025 mean")
    assert intensity.source == "grid operator 2025 mean: constant 412 g/kWh"
    assert intensity.grams(1.8e6, at(0), at(30)).grams == pytest.approx(206.0)
    assert CarbonIntensity.constant(412.5).source == "constant 412.5 g/kWh"
    assert CarbonIntensity.constant(0).grams(5e6).grams == 0.0
    assert not CarbonIntensity.constant(1).is_series and CarbonIntensity.constant(1).span is None
    with pytest.raises(ValueError, match="end .* is before start"):
        intensity.grams(1.0, at(30), at(0))


def test_a_step_in_the_middle_of_the_window_gives_the_time_weighted_mean() -> None:
    # 00:30..01:30: half an hour at 100, half an hour at 300 -> 200 g/kWh; 2 kWh -> 400 g
    estimate = STEPS.grams(7.2e6, at(30), at(90))
    assert estimate.g_per_kwh == pytest.approx(200.0)
    assert estimate.grams == pytest.approx(400.0)
    assert estimate.source == "test steps"
    # 00:45..01:45: 15 min at 100 and 45 min at 300 -> (1500 + 13500) / 60 = 250
    assert STEPS.mean_g_per_kwh(at(45), at(105)) == pytest.approx(250.0)


def test_each_point_holds_until_the_next_and_the_last_only_ends_the_span() -> None:
    assert STEPS.mean_g_per_kwh(at(0), at(120)) == pytest.approx(200.0)  # the final 500 never weighs in
    assert STEPS.mean_g_per_kwh(at(10), at(50)) == pytest.approx(100.0)
    assert STEPS.mean_g_per_kwh(at(60), at(61)) == pytest.approx(300.0)
    # a zero-length window takes the intensity in effect at that instant
    assert STEPS.mean_g_per_kwh(at(59), at(59)) == 100.0
    assert STEPS.mean_g_per_kwh(at(60), at(60)) == 300.0
    assert STEPS.mean_g_per_kwh(at(120), at(120)) == 500.0
    assert STEPS.span == (MIDNIGHT_S, MIDNIGHT_S + 7200)


def test_windows_may_be_unix_seconds_and_match_datetimes() -> None:
    assert STEPS.mean_g_per_kwh(MIDNIGHT_S + 1800, MIDNIGHT_S + 5400) == pytest.approx(200.0)
    plus_one = timezone(timedelta(hours=1))
    assert STEPS.mean_g_per_kwh(datetime(2026, 11, 30, 1, 30, tzinfo=plus_one), at(90)) == pytest.approx(200.0)


def test_a_window_outside_the_series_names_both_spans() -> None:
    message = (
        r"window 2026-11-29T23:59Z\.\.2026-11-30T00:30Z is outside the series' span "
        r"2026-11-30T00:00Z\.\.2026-11-30T02:00Z \(test steps\)"
    )
    with pytest.raises(ValueError, match=message):
        STEPS.grams(1.0, at(-1), at(30))
    with pytest.raises(ValueError, match=r"window 2026-11-30T01:00Z\.\.2026-11-30T02:00:01Z is outside"):
        STEPS.grams(1.0, at(60), MIDNIGHT_S + 7201)
    with pytest.raises(ValueError, match="is a time series; give the window's start and end"):
        STEPS.grams(1.0)


def test_bad_windows_and_energies_are_refused() -> None:
    with pytest.raises(ValueError, match="window start: datetime .* has no timezone"):
        STEPS.grams(1.0, datetime(2026, 11, 30, 0, 30), at(60))
    with pytest.raises(ValueError, match=r"milliseconds\? divide by 1000"):
        STEPS.grams(1.0, MIDNIGHT_S * 1000, MIDNIGHT_S * 1000 + 1)
    with pytest.raises(ValueError, match="window end: expected Unix seconds"):
        STEPS.grams(1.0, at(0), "01:00")  # type: ignore[arg-type]
    for energy in (-1.0, float("nan"), float("inf"), 2e12):
        with pytest.raises(ValueError, match="energy_j: .* must be finite and within 0"):
            STEPS.grams(energy, at(0), at(60))


def test_constant_and_series_values_must_be_sane() -> None:
    for bad, reason in ((-1, "negative"), (float("nan"), "not a finite"), (2000.5, "above 2000")):
        with pytest.raises(ValueError, match=f"carbon.g_per_kwh: intensity .*{reason}"):
            CarbonIntensity.constant(bad)
    assert CarbonIntensity.constant(2000).constant_g_per_kwh == 2000.0
    with pytest.raises(ValueError, match="point 1: intensity -5 g/kWh is negative"):
        CarbonIntensity.series([(at(0), 1.0), (at(1), -5.0)], source="s")
    with pytest.raises(ValueError, match="point 1 at 2026-11-30T00:00Z is not after point 0"):
        CarbonIntensity.series([(at(0), 1.0), (at(0), 2.0)], source="s")
    with pytest.raises(ValueError, match="no points"):
        CarbonIntensity.series([], source="s")
    with pytest.raises(ValueError, match="source must name"):
        CarbonIntensity.series([(at(0), 1.0)], source=" ")


def test_csv_with_z_offsets_and_unix_seconds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "timestamp,g_per_kwh\n"
        "2026-11-30T00:00Z,100\n"
        "2026-11-30T02:00+01:00,300\n"  # 01:00Z
        f"{MIDNIGHT_S + 7200:.0f},500\n",
    )
    intensity = load_intensity_csv(path)
    assert intensity.times == (MIDNIGHT_S, MIDNIGHT_S + 3600, MIDNIGHT_S + 7200)
    assert intensity.values == (100.0, 300.0, 500.0)
    assert intensity.source == "csv grid.csv (3 points, 2026-11-30T00:00Z..2026-11-30T02:00Z)"
    estimate = intensity.grams(7.2e6, at(30), at(90))
    assert estimate.grams == pytest.approx(400.0) and estimate.g_per_kwh == pytest.approx(200.0)


def test_csv_label_of_a_day_of_half_hours(tmp_path: Path) -> None:
    rows = "".join(f"{(MIDNIGHT + timedelta(minutes=30 * i)).isoformat()},{200 + i}\n" for i in range(96))
    intensity = load_intensity_csv(write(tmp_path, "time,intensity\n" + rows), label="National Grid ESO")
    assert intensity.source == ("National Grid ESO: csv grid.csv (96 points, 2026-11-30T00:00Z..2026-12-01T23:30Z)")
    # 00:00..01:00 covers 200 and 201 for half an hour each
    assert intensity.mean_g_per_kwh(at(0), at(60)) == pytest.approx(200.5)
    single = load_intensity_csv(write(tmp_path, "unix_s,g_per_kwh\n1795996800.5,50\n", "one.csv"))
    assert single.source == "csv one.csv (1 point, 2026-11-30T00:00:00.500000Z..2026-11-30T00:00:00.500000Z)"


def test_csv_extra_columns_bom_blank_lines_and_named_columns(tmp_path: Path) -> None:
    text = "\ufeffZone, Datetime ,Carbon gCO2/kWh,note\n\nDE,2026-11-30T00:00Z,380,\n\nDE,2026-11-30T01:00Z,420,x\n"
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    intensity = load_intensity_csv(path, time_column="datetime", intensity_column="Carbon gCO2/kWh")
    assert intensity.values == (380.0, 420.0)
    with pytest.raises(ValueError, match="line 1: missing the g/kWh column.*pass intensity_column="):
        load_intensity_csv(path, time_column="datetime")
    with pytest.raises(ValueError, match="line 1: no time column 'when'"):
        load_intensity_csv(path, time_column="when", intensity_column="Carbon gCO2/kWh")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,g_per_kwh\n2026-11-30T00:00Z,1\n", r"line 1: missing the time column.*pass time_column="),
        ("2026-11-30T00:00Z,100\n", r"line 1: missing the time column.*a header row is required"),
        ("time,timestamp,g_per_kwh\n", r"line 1: several time columns \['time', 'timestamp'\]"),
        ("timestamp,g_per_kwh\n2026-11-30T00:00Z,1\nyesterday,2\n", r"line 3: cannot parse time 'yesterday'"),
        ("timestamp,g_per_kwh\n2026-11-30 00:00,1\n", r"line 2: time '2026-11-30 00:00' has no timezone; append Z"),
        ("timestamp,g_per_kwh\n1795996800000,1\n", r"line 2: Unix time .* outside 2000..2100 \(milliseconds\?"),
        ("timestamp,g_per_kwh\nnan,1\n", r"line 2: time nan is not finite"),
        ("timestamp,g_per_kwh\n2026-11-30T00:00Z,-3\n", r"line 2: intensity -3 g/kWh is negative"),
        ("timestamp,g_per_kwh\n2026-11-30T00:00Z,NaN\n", r"line 2: intensity nan is not a finite number"),
        ("timestamp,g_per_kwh\n2026-11-30T00:00Z,2500\n", r"line 2: intensity 2500 g/kWh is above 2000.*unit"),
        ("timestamp,g_per_kwh\n2026-11-30T00:00Z,high\n", r"line 2: cannot parse intensity 'high'"),
        ("timestamp,g_per_kwh\n2026-11-30T00:00Z\n", r"line 2: 1 cells but the header has 2"),
        (
            "timestamp,g_per_kwh\n2026-11-30T01:00Z,1\n2026-11-30T00:00Z,2\n",
            r"line 3: time 2026-11-30T00:00Z is before line 2's 2026-11-30T01:00Z; sort the rows",
        ),
        (
            "timestamp,g_per_kwh\n2026-11-30T00:00Z,1\n\n2026-11-30T01:00+01:00,2\n",
            r"line 4: time 2026-11-30T00:00Z duplicates line 2's 2026-11-30T00:00Z",
        ),
        ("timestamp,g_per_kwh\n", r"no data rows after the header"),
        ("\n\n", r"empty; give a header row"),
    ],
)
def test_csv_errors_name_the_file_the_line_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        load_intensity_csv(path)
    assert str(path) in str(caught.value)


def test_csv_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"absent\.csv: cannot read the carbon intensity CSV .*check the path"):
        load_intensity_csv(tmp_path / "absent.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("timestamp,g_per_kwh\n2026-11-30T00:00Z,1 \xb5\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8"):
        load_intensity_csv(latin)
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as handle:
        os.truncate(handle.fileno(), MAX_CSV_BYTES + 1)  # sparse: refused on its size before any read
    with pytest.raises(ValueError, match=r"huge\.csv: 16777217 bytes is over the 16777216 byte limit"):
        load_intensity_csv(huge)


def test_direct_construction_is_validated_and_stores_floats() -> None:
    built = CarbonIntensity(source="direct", times=(int(MIDNIGHT_S), int(MIDNIGHT_S) + 60), values=(7, 9))
    assert built.values == (7.0, 9.0) and all(isinstance(v, float) for v in built.values + built.times)
    assert CarbonIntensity(source="direct", constant_g_per_kwh=5).constant_g_per_kwh == 5.0
    with pytest.raises(ValueError, match="either a constant or a series, not both"):
        CarbonIntensity(source="both", constant_g_per_kwh=5.0, times=(MIDNIGHT_S,), values=(1.0,))
    with pytest.raises(ValueError, match="2 times but 1 values"):
        CarbonIntensity(source="uneven", times=(MIDNIGHT_S, MIDNIGHT_S + 1), values=(1.0,))
    with pytest.raises(ValueError, match="point 0: intensity must be a number"):
        CarbonIntensity(source="text", times=(MIDNIGHT_S,), values=("400",))  # type: ignore[arg-type]
