"""Schedule timing: --every / --at / --until / --times / --cron parsing, and the due times that follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lem_planner.schedules import ScheduleError, Timing, build_timing, parse_every, parse_time, parse_zone

NOW = datetime(2026, 3, 28, 12, 0, 0, 250_000, tzinfo=UTC)


def build(**options: object) -> Timing:
    base: dict[str, object] = {"cron": None, "every": None, "at": None, "until": None, "times": None, "tz": "UTC"}
    return build_timing(**{**base, **options}, now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("6h", 21600),
        ("1d", 86400),
        ("2w", 14 * 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 6H ", 21600),
        ("1m 30s", 90),
    ],
)
def test_every_accepts_durations(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("6", "--every: '6' is not a duration"),
        ("6x", "is not a duration"),
        ("", "is not a duration"),
        ("h", "is not a duration"),
        ("0s", "under 1 second"),
        ("0.5s", "under 1 second"),
    ],
)
def test_every_refuses_what_is_not_a_duration(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_every(text)


def test_times_without_offset_are_read_in_the_time_zone() -> None:
    berlin = parse_zone("Europe/Berlin")
    assert parse_time("2026-07-01T02:00", berlin, "--at") == datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert parse_time("2026-07-01T02:00Z", berlin, "--at") == datetime(2026, 7, 1, 2, 0, tzinfo=UTC)
    assert parse_time("2026-07-01 02:00:00+01:00", berlin, "--at") == datetime(2026, 7, 1, 1, 0, tzinfo=UTC)
    with pytest.raises(ScheduleError, match="--until: 'tomorrow' is not an ISO time"):
        parse_time("tomorrow", berlin, "--until")
    with pytest.raises(ScheduleError, match="--tz: 'Mars/Olympus' is not a time zone"):
        parse_zone("Mars/Olympus")


def test_every_starts_one_interval_from_now_on_a_whole_second_and_steps_by_it() -> None:
    timing = build(every="6h")
    first = timing.first_at_or_after(NOW)
    assert first == datetime(2026, 3, 28, 18, 0, 1, tzinfo=UTC)
    assert timing.after(first, occurrences=1) == first + timedelta(hours=6)


def test_at_with_every_sets_the_first_firing_and_at_alone_fires_once() -> None:
    timing = build(every="1h", at="2026-03-29T00:00")
    assert timing.first_at_or_after(NOW) == datetime(2026, 3, 29, tzinfo=UTC)
    once = build(at="2026-03-29T00:00")
    assert once.first_at_or_after(NOW) == datetime(2026, 3, 29, tzinfo=UTC)
    assert once.after(datetime(2026, 3, 29, tzinfo=UTC), occurrences=1) is None
    assert build(at="2026-03-29T00:00", times=1).times == 1


def test_times_and_until_end_the_schedule() -> None:
    timing = build(every="1h", times=3)
    first = timing.first_at_or_after(NOW)
    second = timing.after(first, 1)
    third = timing.after(second, 2)
    assert (second - first, third - second) == (timedelta(hours=1), timedelta(hours=1))
    assert timing.after(third, 3) is None
    until = build(every="1h", until="2026-03-28T14:30")
    first = until.first_at_or_after(NOW)
    assert until.after(first, 1) == first + timedelta(hours=1)
    assert until.after(first + timedelta(hours=1), 2) is None  # 14:00:01 + 1 h is past 14:30


def test_cron_follows_its_time_zone_across_a_daylight_saving_change() -> None:
    timing = build(cron="0 2 * * *", tz="Europe/Berlin")
    first = timing.first_at_or_after(NOW)
    assert first == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 02:00 does not exist that night: 03:00 CEST
    assert timing.after(first, 1) == datetime(2026, 3, 30, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert build(cron="0  2 * * *").cron == "0 2 * * *"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give one of --cron"),
        ({"cron": "61 2 * * *"}, "--cron: '61 2 \\* \\* \\*': field 1 \\(minute\\) '61' is not valid: it takes 0-59"),
        ({"cron": "0 2 * *"}, "has 4 field\\(s\\); a cron expression has 5"),
        ({"cron": "0 2 * * *", "every": "1h"}, "--cron: give it alone"),
        ({"every": "1h", "times": 0}, "--times: 0 is not a number of firings"),
        ({"at": "2026-03-28T11:00"}, "--at: 2026-03-28T11:00:00Z is in the past"),
        ({"at": "2026-03-29T00:00", "times": 3}, "--times: --at alone fires once"),
        ({"every": "1h", "until": "2026-03-28T12:30"}, "--until: 2026-03-28T12:30:00Z is before the first firing"),
        ({"every": "1h", "tz": "Nowhere/Land"}, "--tz: 'Nowhere/Land' is not a time zone"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(options: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        build(**options)


def test_due_times_missed_while_no_beat_ran_are_counted_and_the_latest_kept() -> None:
    timing = build(every="10s")
    first = timing.first_at_or_after(NOW)
    later = first + timedelta(seconds=95)  # due: first, +10, ..., +90: 10 due times
    dues = timing.due_by(first, later, occurrences=0, keep=2)
    assert dues.count == 10 and dues.first == first
    assert dues.recent == [first + timedelta(seconds=80), first + timedelta(seconds=90)]
    assert dues.following == first + timedelta(seconds=100)
    assert timing.due_by(first, later, occurrences=0, keep=0).recent == []


def test_due_times_stop_at_times_and_at_until() -> None:
    timing = build(every="10s", times=4)
    first = timing.first_at_or_after(NOW)
    dues = timing.due_by(first, first + timedelta(minutes=5), occurrences=0, keep=10)
    assert dues.count == 4 and len(dues.recent) == 4 and dues.following is None
    # two already dealt with: two remain
    dues = timing.due_by(first + timedelta(seconds=20), first + timedelta(minutes=5), occurrences=2, keep=10)
    assert dues.count == 2 and dues.following is None


def test_a_cron_schedule_after_a_long_absence_fires_its_latest_due_times() -> None:
    timing = build(cron="*/5 * * * *")
    first = timing.first_at_or_after(NOW)
    assert first == datetime(2026, 3, 28, 12, 5, tzinfo=UTC)
    dues = timing.due_by(first, first + timedelta(hours=1, minutes=2), occurrences=0, keep=1)
    assert dues.count == 13 and dues.recent == [datetime(2026, 3, 28, 13, 5, tzinfo=UTC)]
    assert dues.following == datetime(2026, 3, 28, 13, 10, tzinfo=UTC)


def test_resuming_takes_the_next_due_time_on_the_schedules_grid() -> None:
    timing = build(every="1h", at="2026-03-28T13:00")
    assert timing.first_at_or_after(datetime(2026, 3, 28, 15, 20, tzinfo=UTC)) == datetime(
        2026, 3, 28, 16, 0, tzinfo=UTC
    )
    assert timing.first_at_or_after(datetime(2026, 3, 28, 16, 0, tzinfo=UTC)) == datetime(
        2026, 3, 28, 16, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", "field 1 (minute) '61' is not valid: it takes 0-59"),
        ("0 24 * * *", "field 2 (hour) '24' is not valid: it takes 0-23"),
        ("0 0 * 13 *", "field 4 (month) '13' is not valid: it takes 1-12"),
        ("0 0 * * *  *", "has 6 field(s); a cron expression has 5"),
    ],
)
def test_a_bad_cron_names_its_field_and_range(cron: str, says: str) -> None:
    from lem_planner.schedules import check_cron

    with pytest.raises(ScheduleError) as info:
        check_cron(cron)
    assert says in str(info.value), info.value
    assert "not a cron expression of 5 fields" not in str(info.value)
