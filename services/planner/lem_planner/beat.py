"""The beat process (`lem-beat`, or `celery -A lem_planner.beat beat`): fires the schedules stored in PostgreSQL.

``ScheduleScheduler`` is a celery beat Scheduler. At start it takes a PostgreSQL advisory lock on a connection it
keeps for its whole life, so exactly one beat runs: a second one exits at once naming the holder, and the lock
goes with the holder's connection when it dies (even by SIGKILL), so a restarted beat never waits for a stale
lock. A database outage ends that session too: the beat then fires nothing and tries every tick to take the lock
again; if another beat took it meanwhile, it stands by. ``lem-beat --standby`` starts a beat that stands by from
the start (and takes over when the holder stops) instead of exiting. Every tick (about a second) the holder
fires the due schedules (``lem_planner.schedules.fire_due``: each due time recorded once, in the transaction that
creates its campaign) and writes a heartbeat to Redis (``lem:beat``) that ``lem schedule list`` shows. Ordinary
``beat_schedule`` entries, if any are configured, still run as usual (on the holder only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import Scheduler

from lem_shared.wire.celery_app import make_celery

log = logging.getLogger(__name__)

app = make_celery("lem-beat")
app.conf.beat_scheduler = "lem_planner.beat:ScheduleScheduler"
app.conf.beat_max_loop_interval = 1

TICK_S = 1.0
# pg_advisory_lock key of the one beat ("lembeat" as a number); dispatch.py's lock is another key.
BEAT_LOCK_ID = 0x6C656D62
HEARTBEAT_TTL_S = 10
# lem-beat --standby: a beat started while another holds the lock waits for it instead of exiting.
STANDBY = False


class AnotherBeat(SystemExit):
    """Raised (exit code 1) when another beat holds the lock."""


class BeatLock:
    """A session-level PostgreSQL advisory lock, held on a connection of its own for as long as the beat runs.

    ``check`` (every tick) says whether the lock is held now: a database outage ends the session and with it the
    lock, so each check then tries to take it again until it has it; if another beat took it meanwhile, this one
    stands by (and takes it when that one's session ends)."""

    def __init__(self) -> None:
        self.connection: Any = None
        self.held = False
        self._unlocked = False  # SQLite: one host; the unique firing rows still hold
        self._standing_by = False
        self._unreachable = False

    def acquire(self, standby: bool = False) -> None:
        """Take the lock, or raise AnotherBeat naming the process that holds it (``standby``: wait for it)."""
        from lem_shared.db.session import get_engine

        if get_engine().dialect.name != "postgresql":
            self._unlocked = self.held = True
            return
        self.connection = self._connect()  # a database that does not answer at start is an error at start
        if self._try_take():
            return
        holder = self._holder()
        if not standby:
            self.release()
            raise AnotherBeat(
                f"another beat is running ({holder}); exactly one may run: stop it first "
                "(`make down` or its own stop), or leave that one running (or start this one with "
                "--standby to take over when it stops)"
            )
        self._stand_by(holder)

    def check(self) -> bool:
        """Whether the lock is ours now; when it is not, try to take it (again)."""
        if self._unlocked:
            return True
        from sqlalchemy import text

        try:
            if self.connection is None:
                self.connection = self._connect()
            if self.held:
                self.connection.execute(text("SELECT 1"))  # the session lives, so the lock is still ours
                self.connection.commit()
                return True
            if self._try_take():
                log.warning("beat: took the beat lock; firing schedules")
                return True
            self._stand_by(self._holder())
            return False
        except Exception as exc:  # noqa: BLE001 - the database is away: the session, and the lock with it, is gone
            if self.held:
                log.warning(
                    "beat: lost the database connection that holds the beat lock (%s); firing nothing "
                    "until it is taken again",
                    _first_line(exc),
                )
            elif not self._unreachable:
                log.warning("beat: the database does not answer (%s); retrying every tick", _first_line(exc))
            self.held, self._unreachable = False, True
            self._drop()
            return False

    def release(self) -> None:
        self.held = False
        self._drop()  # the session ends, and with it the lock

    def _connect(self) -> Any:
        from sqlalchemy import text

        from lem_shared.db.session import get_engine

        connection = get_engine().connect()
        try:
            connection.execute(
                text("SELECT set_config('application_name', :n, false)"),
                {"n": f"lem-beat pid {os.getpid()} on {socket.gethostname()}"[:63]},
            )
            connection.commit()
        except BaseException:
            connection.close()
            raise
        return connection

    def _try_take(self) -> bool:
        from sqlalchemy import text

        got = bool(self.connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": BEAT_LOCK_ID}))
        self.connection.commit()
        self.held, self._unreachable = got, False
        if got:
            self._standing_by = False
        return got

    def _holder(self) -> str:
        from sqlalchemy import text

        holder = self.connection.scalar(
            text(
                "SELECT a.application_name || ' (since ' || to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') "
                "|| ')' FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = :k AND l.granted LIMIT 1"
            ),
            {"k": BEAT_LOCK_ID},
        )
        self.connection.commit()
        return holder or "holder unknown"

    def _stand_by(self, holder: str) -> None:
        if not self._standing_by:
            log.warning("beat: another beat holds the beat lock (%s); standing by, firing nothing", holder)
        self._standing_by = True

    def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
            with contextlib.suppress(Exception):
                connection.close()


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


class ScheduleScheduler(Scheduler):
    """celery beat Scheduler that fires the schedules in the database (and any ordinary beat_schedule entries)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = BeatLock()
        self._next_poll = 0.0
        self._beacons: Any = None
        self._started = time.time()
        self._ticks = 0
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.lock.acquire(standby=STANDBY)
        if self.lock.held:
            log.info("beat: holding the beat lock; firing schedules from the database every %.0f s", TICK_S)
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + TICK_S
            if self.lock.check():
                self._poll()
        if not self.lock.held:  # without the lock nothing fires, the ordinary beat_schedule entries neither
            return max(0.0, self._next_poll - time.monotonic())
        wait = super().tick(*args, **kwargs)
        return max(0.0, min(wait, self._next_poll - time.monotonic()))

    def _poll(self) -> None:
        from lem_planner.schedules import fire_due

        try:
            fire_due(self.app, datetime.now(UTC))
            self._ticks += 1
        except Exception:  # noqa: BLE001 - a database or broker outage must not end beat; the next tick retries
            log.exception("beat: firing schedules failed; retrying in %.0f s", TICK_S)
        self._heartbeat()

    def _heartbeat(self) -> None:
        from lem_planner.schedules import BEAT_KEY
        from lem_shared.wire.heartbeat import beacons

        try:
            if self._beacons is None:
                self._beacons = beacons()
            beat = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self._started,
                "time": time.time(),
                "ticks": self._ticks,
            }
            self._beacons.put([(BEAT_KEY, beat)], HEARTBEAT_TTL_S)
        except Exception:  # noqa: BLE001 - the heartbeat is for display only
            self._beacons = None

    def close(self) -> None:
        from lem_planner.schedules import BEAT_KEY

        if self._beacons is not None:
            with contextlib.suppress(Exception):  # the heartbeat would expire anyway
                self._beacons.delete(BEAT_KEY)
        self.lock.release()
        super().close()

    @property
    def info(self) -> str:
        return "    . db -> schedules in PostgreSQL (lem schedule list)"


def main() -> None:
    """`lem-beat [--standby]`: celery beat with the database scheduler; further arguments go to `celery beat`.
    ``--standby``: when another beat holds the lock, wait for it (and take over when it stops) instead of exiting."""
    global STANDBY
    STANDBY = "--standby" in sys.argv[1:]
    sys.argv[1:] = [a for a in sys.argv[1:] if a != "--standby"]
    try:
        app.start(["beat", "--scheduler", "lem_planner.beat:ScheduleScheduler", "--loglevel", "INFO", *sys.argv[1:]])
    except AnotherBeat as exc:  # celery has redirected sys.stderr to its log by now: write to the real one
        print(f"error: {exc}", file=sys.__stderr__)
        sys.exit(1)


if __name__ == "__main__":
    main()
