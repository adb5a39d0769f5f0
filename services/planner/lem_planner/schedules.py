"""Campaigns on a schedule: when a schedule is due (cron, every, at; until, times), the schedules in PostgreSQL,
and firing them, each due time exactly once.

A schedule stores the campaign file's text as it was at ``lem schedule add`` (validated then), so editing the
file later changes nothing. ``fire_due`` is called by the beat process (``lem_planner.beat``) about every second:
for each schedule due, in one transaction with the schedule's row locked (``FOR UPDATE SKIP LOCKED``), it records
the firing (unique per schedule and due time), creates the campaign through the planner's own
``create_campaign`` and moves ``next_due_at`` on. Either all of that is committed or none of it, so a beat killed
at any moment neither loses a due time (the next beat finds it still due) nor repeats one.

Due times that passed while no beat ran are made up late when a beat comes back, up to the schedule's
``catch_up`` most recent ones (default 1); older ones are recorded as one ``missed`` firing. Occurrences that fall
while a schedule is paused are neither fired nor counted.

Overlap: a firing whose campaign needs a backend that a running campaign uses either creates its campaign at
once, queued behind the running one (``queue``, the default: ``advance`` sends runs lowest campaign id first, and
only to free workers, one run per worker), or creates nothing and records the skip (``skip``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import socket
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lem_shared.config.errors import ConfigError
from lem_shared.config.files import read_campaign_file
from lem_shared.config.plan import plan_text

log = logging.getLogger(__name__)

DEFAULT_CATCH_UP = 1
# A cron schedule is stepped through at most this many due times when a beat comes back after a long absence.
_MAX_CRON_STEPS = 100_000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class ScheduleOverlap(StrEnum):
    """What a firing does when a campaign is still running on the GPUs (backends) it needs."""

    QUEUE = "queue"  # create the campaign now; its runs go after the running campaign's (dispatch order)
    SKIP = "skip"  # create nothing; the firing is recorded as skipped, naming the running campaign


class ScheduleError(ValueError):
    """Bad schedule input; the message names the option and the fix (one line)."""


# --- when: parsing --------------------------------------------------------------------------------------------


def parse_every(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``1d``, ``2w`` or a sum such as ``1h30m``: seconds (at least 1)."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ScheduleError(f"--every: {text!r} is not a duration; write e.g. 30s, 15m, 6h, 1d or 1h30m")
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
    if seconds < 1:
        raise ScheduleError(f"--every: {text!r} is under 1 second; give at least 1s")
    return seconds


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"--tz: {name!r} is not a time zone; give an IANA name such as UTC or Europe/London"
        ) from None


def parse_time(text: str, zone: ZoneInfo, option: str) -> datetime:
    """An ISO 8601 time (``2026-12-01T02:00``, ``2026-12-01 02:00:00+01:00``, ``...Z``), in UTC. Without an
    offset it is read in ``zone``."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            f"{option}: {text!r} is not an ISO time; write e.g. 2026-12-01T02:00 or 2026-12-01T02:00+01:00"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def check_cron(expression: str) -> str:
    from croniter import croniter

    expression = " ".join(expression.split())
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"--cron: {expression!r} has {len(fields)} field(s); a cron expression has 5 (minute "
            "hour day-of-month month day-of-week), e.g. '0 2 * * *' for 02:00 every day"
        )
    if not croniter.is_valid(expression):
        raise ScheduleError(f"--cron: {expression!r}: {_cron_field_problem(fields)}")
    return expression


_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))


def _cron_field_problem(fields: list[str]) -> str:
    """Which of 5 cron fields croniter refuses, and its range."""
    from croniter import croniter

    for index, (name, low, high) in enumerate(_CRON_FIELDS):
        probe = ["*"] * 5
        probe[index] = fields[index]
        if not croniter.is_valid(" ".join(probe)):
            names = " (or jan-dec)" if name == "month" else " (or sun-sat)" if name == "day-of-week" else ""
            return (
                f"field {index + 1} ({name}) {fields[index]!r} is not valid: it takes {low}-{high}{names}, "
                "*, lists (1,2), ranges (1-5) and steps (*/15)"
            )
    return "not a valid cron expression (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"


# --- when: due times ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """When a schedule is due. ``kind`` cron: on the cron expression in ``timezone``; every: ``start`` + k x
    ``every_s``; at: once, at ``start``. ``until`` (inclusive) and ``times`` (due times in all) end it."""

    kind: str
    cron: str | None = None
    every_s: float | None = None
    start: datetime | None = None
    until: datetime | None = None
    times: int | None = None
    timezone: str = "UTC"

    def _cron_after(self, t: datetime, count: int = 1) -> list[datetime]:
        from croniter import croniter

        assert self.cron is not None
        it = croniter(self.cron, t.astimezone(ZoneInfo(self.timezone)))
        return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]

    def _within(self, due: datetime | None, occurrences: int) -> datetime | None:
        if due is None or (self.until is not None and due > self.until):
            return None
        if self.times is not None and occurrences >= self.times:
            return None
        return due

    def first_at_or_after(self, t: datetime, occurrences: int = 0) -> datetime | None:
        """The schedule's first due time at or after ``t`` (None: it has no more), ``occurrences`` dealt with."""
        if self.kind == "cron":
            due: datetime | None = self._cron_after(t - timedelta(microseconds=1))[0]
        elif self.kind == "every":
            assert self.start is not None and self.every_s is not None
            k = max(0, math.ceil((t - self.start).total_seconds() / self.every_s))
            due = self.start + timedelta(seconds=k * self.every_s)
            if due < t:  # float rounding
                due += timedelta(seconds=self.every_s)
        else:
            assert self.start is not None
            due = self.start if self.start >= t else None
        return self._within(due, occurrences)

    def after(self, due: datetime, occurrences: int) -> datetime | None:
        """The due time that follows ``due`` (None: none), ``occurrences`` dealt with including ``due``."""
        if self.kind == "cron":
            following: datetime | None = self._cron_after(due)[0]
        elif self.kind == "every":
            assert self.every_s is not None
            following = due + timedelta(seconds=self.every_s)
        else:
            following = None
        return self._within(following, occurrences)

    def due_by(self, next_due: datetime, now: datetime, occurrences: int, keep: int) -> DueTimes:
        """The due times from ``next_due`` up to ``now``: how many, the first, the last ``keep`` of them (to fire),
        and the one after ``now`` (None: the schedule ends)."""
        window = max(keep, 1)
        count, first, recent = 0, next_due, deque[datetime](maxlen=window)
        due: datetime | None = next_due
        if self.kind == "every" and self.until is None and self.times is None:  # no stepping through a long gap
            assert self.every_s is not None
            count = int((now - next_due).total_seconds() // self.every_s) + 1
            step = timedelta(seconds=self.every_s)
            recent.extend(next_due + step * k for k in range(max(0, count - window), count))
            while recent and recent[-1] > now:  # float rounding at the edge
                recent.pop()
                count -= 1
            return DueTimes(count, first, list(recent)[-keep:] if keep else [], next_due + step * count)
        steps = 0
        while due is not None and due <= now:
            count, steps = count + 1, steps + 1
            recent.append(due)
            due = self.after(due, occurrences + count)
            if self.kind == "cron" and steps >= _MAX_CRON_STEPS and due is not None and due <= now:
                # Beat was away for very long: jump to the last due times before now (their number is not known).
                last = self._cron_prev(now, window)
                recent.clear()
                recent.extend(last)
                count = -1
                due = self.after(last[-1], occurrences + steps + len(last)) if last else None
                break
        return DueTimes(count, first, list(recent)[-keep:] if keep else [], due)

    def _cron_prev(self, now: datetime, count: int) -> list[datetime]:
        from croniter import croniter

        assert self.cron is not None
        it = croniter(self.cron, now.astimezone(ZoneInfo(self.timezone)) + timedelta(microseconds=1))
        return sorted(it.get_prev(datetime).astimezone(UTC) for _ in range(count))

    def describe(self) -> str:
        if self.kind == "cron":
            text = f"cron '{self.cron}' ({self.timezone})"
        elif self.kind == "every":
            assert self.start is not None and self.every_s is not None
            text = f"every {format_duration(self.every_s)} from {iso(self.start)}"
        else:
            assert self.start is not None
            text = f"once at {iso(self.start)}"
        if self.until is not None:
            text += f", until {iso(self.until)}"
        if self.times is not None:
            text += f", {self.times} time{'s' if self.times != 1 else ''}"
        return text


@dataclass(frozen=True)
class DueTimes:
    count: int  # due times up to now (-1: very many, not counted)
    first: datetime
    recent: list[datetime]  # the last ``keep`` of them, oldest first: these are fired
    following: datetime | None  # the next due time after now


def build_timing(
    *, cron: str | None, every: str | None, at: str | None, until: str | None, times: int | None, tz: str, now: datetime
) -> Timing:
    """Validate the options of ``lem schedule add`` into a Timing, or raise ScheduleError naming the option."""
    zone = parse_zone(tz)
    if cron is None and every is None and at is None:
        raise ScheduleError("give one of --cron '0 2 * * *', --every 6h or --at 2026-12-01T02:00")
    if cron is not None and (every is not None or at is not None):
        raise ScheduleError("--cron: give it alone, without --every or --at (--at with --every sets the first firing)")
    if times is not None and times < 1:
        raise ScheduleError(f"--times: {times} is not a number of firings; give 1 or more")
    start = parse_time(at, zone, "--at") if at is not None else None
    until_at = parse_time(until, zone, "--until") if until is not None else None
    if start is not None and start <= now:
        raise ScheduleError(f"--at: {iso(start)} is in the past (now {iso(now)}); give a later time")
    if cron is not None:
        timing = Timing("cron", cron=check_cron(cron), until=until_at, times=times, timezone=tz)
    elif every is not None:
        seconds = parse_every(every)
        if start is None:  # one interval from now, on a whole second
            start = (now + timedelta(seconds=seconds, microseconds=999_999)).replace(microsecond=0)
        timing = Timing("every", every_s=seconds, start=start, until=until_at, times=times, timezone=tz)
    else:
        if times is not None and times != 1:
            raise ScheduleError(f"--times: --at alone fires once; drop --times {times} or add --every")
        timing = Timing("at", start=start, until=until_at, times=times, timezone=tz)
    if until_at is not None and timing.first_at_or_after(now) is None:
        raise ScheduleError(f"--until: {iso(until_at)} is before the first firing; give a later time")
    return timing


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the campaign a schedule runs -----------------------------------------------------------------------------

# --- the store ------------------------------------------------------------------------------------------------


def _timing_of(row: Any) -> Timing:
    from lem_shared.dispatch import aware

    return Timing(
        row.kind,
        cron=row.cron,
        every_s=row.every_s,
        start=aware(row.start_at) if row.start_at else None,
        until=aware(row.until_at) if row.until_at else None,
        times=row.times,
        timezone=row.timezone,
    )


def add_schedule(path: str, timing: Timing, overlap: str, catch_up: int, now: datetime | None = None) -> dict:
    """Store a schedule of the campaign file at ``path`` (validated first: ConfigError). Returns its summary."""
    from lem_shared.db.models import Schedule
    from lem_shared.db.session import session_scope

    now = now or datetime.now(UTC)
    text = read_campaign_file(path)  # read once, as every command reads a campaign: what is validated is stored
    plan = plan_text(text, path)
    # A start was checked to be in the future when the timing was built; reading and planning the file since
    # (seconds on a loaded machine) must not skip its first firing.
    first = timing.first_at_or_after(min(now, timing.start) if timing.start is not None else now)
    with session_scope() as s:
        row = Schedule(
            name=plan.campaign.name,
            source_path=str(Path(path).resolve()),
            campaign_text=text,
            spec_hash=hashlib.sha256(text.encode()).hexdigest(),
            kind=timing.kind,
            cron=timing.cron,
            every_s=timing.every_s,
            timezone=timing.timezone,
            start_at=timing.start,
            until_at=timing.until,
            times=timing.times,
            overlap=overlap,
            catch_up=catch_up,
            paused=False,
            next_due_at=first,
            occurrences=0,
        )
        s.add(row)
        s.flush()
        return _summary(row, [])


def _summary(row: Any, firings: list[Any]) -> dict[str, Any]:
    timing = _timing_of(row)
    status = "paused" if row.paused else "finished" if row.next_due_at is None else "active"
    counts: dict[str, int] = {}
    for f in firings:
        counts[f.outcome] = counts.get(f.outcome, 0) + f.occurrences
    last = firings[-1] if firings else None
    return {
        "id": row.id,
        "name": row.name,
        "file": row.source_path,
        "status": status,
        "when": timing.describe(),
        "kind": row.kind,
        "cron": row.cron,
        "every_s": row.every_s,
        "timezone": row.timezone,
        "start_at": iso(row.start_at),
        "until": iso(row.until_at),
        "times": row.times,
        "overlap": row.overlap,
        "catch_up": row.catch_up,
        "next_due_at": iso(row.next_due_at),
        "occurrences": row.occurrences,
        "outcomes": counts,
        "created_at": iso(row.created_at),
        "spec_hash": row.spec_hash,
        "last_firing": _firing(last) if last else None,
    }


def _firing(f: Any) -> dict[str, Any]:
    return {
        "schedule_id": f.schedule_id,
        "due_at": iso(f.due_at),
        "fired_at": iso(f.fired_at),
        "outcome": f.outcome,
        "overlap": f.overlap,
        "campaign_id": f.campaign_id,
        "occurrences": f.occurrences,
        "detail": f.detail,
    }


def list_schedules() -> list[dict[str, Any]]:
    from sqlalchemy import select

    from lem_shared.db.models import Schedule, ScheduleFiring
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        rows = s.scalars(select(Schedule).order_by(Schedule.id)).all()
        firings: dict[int, list[Any]] = {}
        for f in s.scalars(select(ScheduleFiring).order_by(ScheduleFiring.due_at)):
            firings.setdefault(f.schedule_id, []).append(f)
        return [_summary(row, firings.get(row.id, [])) for row in rows]


def schedule_history(schedule_id: int) -> list[dict[str, Any]]:
    """Every firing of a schedule, by due time. LookupError when there is no such schedule."""
    from sqlalchemy import select

    from lem_shared.db.models import Schedule, ScheduleFiring
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        if s.get(Schedule, schedule_id) is None:
            raise LookupError(f"no schedule {schedule_id}")
        rows = s.scalars(
            select(ScheduleFiring).where(ScheduleFiring.schedule_id == schedule_id).order_by(ScheduleFiring.due_at)
        ).all()
        return [_firing(f) for f in rows]


def remove_schedule(schedule_id: int) -> None:
    """Delete a schedule and its firing record (the campaigns it created stay). LookupError when unknown."""
    from sqlalchemy import CursorResult, delete

    from lem_shared.db.models import Schedule
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        deleted = cast(CursorResult[Any], s.execute(delete(Schedule).where(Schedule.id == schedule_id)))
        if deleted.rowcount == 0:
            raise LookupError(f"no schedule {schedule_id}")


def set_paused(schedule_id: int, paused: bool, now: datetime | None = None) -> dict[str, Any]:
    """Pause (nothing fires) or resume (from the first due time after now: what fell in the pause is dropped)."""
    from sqlalchemy import select

    from lem_shared.db.models import Schedule
    from lem_shared.db.session import session_scope
    from lem_shared.dispatch import aware

    now = now or datetime.now(UTC)
    with session_scope() as s:
        row = s.scalars(select(Schedule).where(Schedule.id == schedule_id).with_for_update()).first()
        if row is None:
            raise LookupError(f"no schedule {schedule_id}")
        if not paused and row.paused and row.next_due_at is not None:  # never back before a due time dealt with
            row.next_due_at = _timing_of(row).first_at_or_after(max(now, aware(row.next_due_at)), row.occurrences)
        row.paused = paused
        s.flush()
        return _summary(row, [])


# --- firing ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    schedule_id: int
    due_at: datetime
    outcome: str
    campaign_id: int | None
    detail: str | None


def fire_due(app: Any, now: datetime | None = None) -> list[Fired]:
    """Fire every schedule due at ``now`` (each due time once; see the module's docstring), then dispatch."""
    from sqlalchemy import select

    from lem_shared.db.models import Schedule
    from lem_shared.db.session import session_scope
    from lem_shared.dispatch import advance

    now = now or datetime.now(UTC)
    with session_scope() as s:
        due = s.scalars(
            select(Schedule.id)
            .where(Schedule.paused.is_(False), Schedule.next_due_at <= now)
            .order_by(Schedule.next_due_at, Schedule.id)
        ).all()
    fired: list[Fired] = []
    for schedule_id in due:
        try:
            fired += _fire_schedule(schedule_id, now)
        except Exception as exc:  # noqa: BLE001 - one schedule must not stop the others
            if _transient(exc):  # the database or broker is away: nothing was committed, the next tick retries
                log.warning(
                    "schedule %s: firing failed (%s); trying again on the next tick", schedule_id, _one_line(exc)
                )
                continue
            log.exception("schedule %s: firing failed; recorded as a failed firing", schedule_id)
            try:
                fired += _record_failure(schedule_id, now, exc)
            except Exception:  # noqa: BLE001
                log.exception(
                    "schedule %s: the failed firing could not be recorded; trying again on the next tick", schedule_id
                )
    for f in fired:
        log.info(
            "schedule %s due %s: %s%s%s",
            f.schedule_id,
            iso(f.due_at),
            f.outcome,
            f" campaign {f.campaign_id}" if f.campaign_id else "",
            f" ({f.detail})" if f.detail else "",
        )
    if any(f.campaign_id for f in fired):
        try:
            advance(app)  # the control worker's loop would do it within seconds; this starts runs at once
        except Exception:  # noqa: BLE001
            log.exception("dispatch after firing failed; the control worker's scheduler loop will dispatch")
    return fired


def _fire_schedule(schedule_id: int, now: datetime) -> list[Fired]:
    from sqlalchemy import select

    from lem_shared.db.models import FiringOutcome, Schedule, ScheduleFiring
    from lem_shared.db.session import session_scope
    from lem_shared.dispatch import aware

    with session_scope() as s:
        row = s.scalars(
            select(Schedule)
            .where(Schedule.id == schedule_id, Schedule.paused.is_(False), Schedule.next_due_at <= now)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None or row.next_due_at is None:  # fired meanwhile, paused, removed, or another beat holds it
            return []
        timing = _timing_of(row)
        dues = timing.due_by(aware(row.next_due_at), now, row.occurrences, row.catch_up)
        fired: list[Fired] = []
        missed = dues.count - len(dues.recent) if dues.count >= 0 else -1
        if missed:
            many = f"{missed}" if missed > 0 else f"over {_MAX_CRON_STEPS}"
            passed = (
                f"{many} due time(s) from {iso(dues.first)} on passed while no beat ran; beyond the "
                f"schedule's catch-up ({row.catch_up}: the latest are fired late), not fired"
            )
            s.add(
                ScheduleFiring(
                    schedule_id=row.id,
                    due_at=dues.first,
                    fired_at=now,
                    outcome=FiringOutcome.MISSED,
                    overlap=row.overlap,
                    occurrences=max(missed, 1),
                    detail=passed,
                )
            )
            fired.append(Fired(row.id, dues.first, FiringOutcome.MISSED, None, passed))
        for due in dues.recent:
            outcome, campaign_id, detail = _create(s, row, due, now)
            late = (now - due).total_seconds()
            if late > 5:
                detail = f"{detail + '; ' if detail else ''}fired {late:.0f} s late (no beat ran at its time)"
            s.add(
                ScheduleFiring(
                    schedule_id=row.id,
                    due_at=due,
                    fired_at=now,
                    outcome=outcome,
                    overlap=row.overlap,
                    campaign_id=campaign_id,
                    occurrences=1,
                    detail=detail,
                )
            )
            s.flush()  # the next firing's overlap check sees this one's campaign
            fired.append(Fired(row.id, due, outcome, campaign_id, detail))
        row.occurrences += dues.count if dues.count >= 0 else len(dues.recent) + 1
        row.next_due_at = dues.following
        return fired


def _transient(exc: BaseException) -> bool:
    """Whether a firing failed because the database or the broker is away (worth retrying next tick), as opposed
    to a failure that would repeat on every tick."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis import RedisError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from lem_shared.wire.heartbeat import BeaconsAway

    return isinstance(
        exc, OperationalError | InterfaceError | BeaconsAway | BrokerError | RedisError | ConnectionError | TimeoutError
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (a database error carries its SQL)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _record_failure(schedule_id: int, now: datetime, exc: BaseException) -> list[Fired]:
    """Record a firing that raised (nothing created) once, in a transaction of its own, and move the schedule to
    its next due time, so the beat does not fail on it again every tick. A schedule whose due times cannot even
    be computed (a corrupted row) is paused."""
    from sqlalchemy import select

    from lem_shared.db.models import FiringOutcome, Schedule, ScheduleFiring
    from lem_shared.db.session import session_scope
    from lem_shared.dispatch import aware

    with session_scope() as s:
        row = s.scalars(
            select(Schedule)
            .where(Schedule.id == schedule_id, Schedule.paused.is_(False), Schedule.next_due_at <= now)
            .with_for_update(skip_locked=True)
        ).first()
        if row is None or row.next_due_at is None:  # (None never matches next_due_at <= now: this narrows the type)
            return []
        first = aware(row.next_due_at)
        detail = f"firing failed, nothing created: {_one_line(exc)}"
        try:
            dues = _timing_of(row).due_by(first, now, row.occurrences, 0)
            count, following = max(dues.count, 1), dues.following
        except Exception as timing_exc:  # noqa: BLE001 - the row itself is broken
            count, following = 1, row.next_due_at
            row.paused = True
            why = "" if _one_line(timing_exc) == _one_line(exc) else f" ({_one_line(timing_exc)})"
            detail += f"; its due times cannot be computed{why}, so the schedule is paused: remove it and add it again"
        s.add(
            ScheduleFiring(
                schedule_id=row.id,
                due_at=first,
                fired_at=now,
                outcome=FiringOutcome.FAILED,
                overlap=row.overlap,
                occurrences=count,
                detail=detail,
            )
        )
        row.occurrences += count
        row.next_due_at = following
        return [Fired(row.id, first, FiringOutcome.FAILED, None, detail)]


def _create(s: Any, row: Any, due: datetime, now: datetime) -> tuple[str, int | None, str | None]:
    """Create the schedule's campaign in ``s`` (or skip it): (outcome, campaign id, detail)."""
    from sqlalchemy import select

    from lem_planner.campaigns import create_campaign
    from lem_shared.db.models import Campaign, CampaignStatus, Experiment, FiringOutcome

    try:
        plan = plan_text(row.campaign_text, f"schedule {row.id} ({row.source_path})")
    except ConfigError as exc:
        return FiringOutcome.FAILED, None, "the stored campaign no longer validates: " + "; ".join(exc.problems)
    backends = sorted({e.backend.value for e in plan.experiments})
    running = s.execute(
        select(Campaign.id, Campaign.name, Experiment.backend)
        .join(Experiment, Experiment.campaign_id == Campaign.id)
        .where(Campaign.status == CampaignStatus.RUNNING, Experiment.backend.in_(backends))
        .distinct()
        .order_by(Campaign.id)
    ).all()
    blocking: dict[int, tuple[str, set[str]]] = {}
    for campaign_id, name, backend in running:
        blocking.setdefault(campaign_id, (name, set()))[1].add(backend)
    overlap = ", ".join(f"campaign {cid} ({name}) on {'/'.join(sorted(b))}" for cid, (name, b) in blocking.items())
    if blocking and row.overlap == ScheduleOverlap.SKIP:
        return FiringOutcome.SKIPPED, None, f"still running: {overlap}"
    campaign_id, _ = create_campaign(plan.campaign, plan.experiments, session=s)
    if blocking:
        return FiringOutcome.QUEUED, campaign_id, f"behind {overlap}"
    return FiringOutcome.CREATED, campaign_id, None


# --- the beat's presence --------------------------------------------------------------------------------------

BEAT_KEY = "lem:beat"


def beat_presence() -> dict[str, Any] | None:
    """The running beat's heartbeat (host, pid, last tick), or None when no beat runs."""
    import time

    from lem_shared.wire.heartbeat import beacons

    store = beacons()
    try:
        beat = store.get(BEAT_KEY)
    finally:
        store.close()
    if not beat:
        return None
    beat["age_s"] = round(time.time() - beat["time"], 1)
    return beat


def beat_identity() -> str:
    import os

    return f"lem-beat pid {os.getpid()} on {socket.gethostname()}"
