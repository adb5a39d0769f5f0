"""The beat process (`lem-beat`, or `celery -A lem_planner.beat beat`): fires the schedules stored in PostgreSQL.

``ScheduleScheduler`` is a celery beat Scheduler. At start it takes a PostgreSQL advisory lock on a connection it
keeps for its whole life, so exactly one beat runs: a second one exits at once naming the holder, and the lock
goes with the holder's connection when it dies (even by SIGKILL), so a restarted beat never waits for a stale
lock. Every tick (about a second) it fires the due schedules (``lem_planner.schedules.fire_due``: each due time
recorded once, in the transaction that creates its campaign) and writes a heartbeat to Redis (``lem:beat``) that
``lem schedule list`` shows. Ordinary ``beat_schedule`` entries, if any are configured, still run as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import Scheduler

from lem_shared.celery_app import make_celery

log = logging.getLogger(__name__)

app = make_celery("lem-beat")
app.conf.beat_scheduler = "lem_planner.beat:ScheduleScheduler"
app.conf.beat_max_loop_interval = 1

TICK_S = 1.0
# pg_advisory_lock key of the one beat ("lembeat" as a number); scheduling.py's dispatch lock is another key.
BEAT_LOCK_ID = 0x6C656D62
HEARTBEAT_TTL_S = 10


class AnotherBeat(SystemExit):
    """Raised (exit code 1) when another beat holds the lock."""


class BeatLock:
    """A session-level PostgreSQL advisory lock, held on a connection of its own for as long as the beat runs."""

    def __init__(self) -> None:
        self.connection: Any = None

    def acquire(self) -> None:
        """Take the lock, or raise AnotherBeat naming the process that holds it."""
        from sqlalchemy import text

        from lem_shared.db.session import get_engine

        engine = get_engine()
        if engine.dialect.name != "postgresql":  # SQLite: one host; the unique firing rows still hold
            return
        connection = engine.connect()
        try:
            connection.execute(text("SELECT set_config('application_name', :n, false)"),
                               {"n": f"lem-beat pid {os.getpid()} on {socket.gethostname()}"[:63]})
            got = connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": BEAT_LOCK_ID})
            if not got:
                holder = connection.scalar(text(
                    "SELECT a.application_name || ' (since ' || to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') "
                    "|| ')' FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = :k AND l.granted LIMIT 1"),
                    {"k": BEAT_LOCK_ID})
                raise AnotherBeat(f"another beat is running ({holder or 'holder unknown'}); exactly one may run: "
                                  "stop it first (`make down` or its own stop), or leave that one running")
            connection.commit()
        except BaseException:
            connection.close()
            raise
        self.connection = connection

    def check(self) -> None:
        """The lock is still ours (its connection is alive); after a database restart take it again."""
        if self.connection is None:
            return
        from sqlalchemy import text

        try:
            self.connection.execute(text("SELECT 1"))
            self.connection.commit()
            return
        except Exception:  # noqa: BLE001 - the connection (and with it the lock) is gone
            log.warning("beat: lost the database connection that holds the beat lock; taking it again")
            with contextlib.suppress(Exception):
                self.connection.invalidate()
                self.connection.close()
            self.connection = None
        self.acquire()

    def release(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()  # the session ends, and with it the lock
            finally:
                self.connection = None


class ScheduleScheduler(Scheduler):
    """celery beat Scheduler that fires the schedules in the database (and any ordinary beat_schedule entries)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = BeatLock()
        self._next_poll = 0.0
        self._redis: Any = None
        self._started = time.time()
        self._ticks = 0
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.lock.acquire()
        log.info("beat: holding the beat lock; firing schedules from the database every %.0f s", TICK_S)
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        wait = super().tick(*args, **kwargs)
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + TICK_S
            self._poll()
        return max(0.0, min(wait, self._next_poll - time.monotonic()))

    def _poll(self) -> None:
        from lem_planner.schedules import fire_due

        try:
            self.lock.check()
            fire_due(self.app, datetime.now(UTC))
            self._ticks += 1
        except SystemExit:
            raise
        except Exception:  # noqa: BLE001 - a database or broker outage must not end beat; the next tick retries
            log.exception("beat: firing schedules failed; retrying in %.0f s", TICK_S)
        self._heartbeat()

    def _heartbeat(self) -> None:
        from lem_planner.schedules import BEAT_KEY
        from lem_shared.scheduling import redis_client

        try:
            if self._redis is None:
                self._redis = redis_client()
            self._redis.set(BEAT_KEY, json.dumps({
                "host": socket.gethostname(), "pid": os.getpid(), "started": self._started, "time": time.time(),
                "ticks": self._ticks}), ex=HEARTBEAT_TTL_S)
        except Exception:  # noqa: BLE001 - the heartbeat is for display only
            self._redis = None

    def close(self) -> None:
        from lem_planner.schedules import BEAT_KEY

        if self._redis is not None:
            with contextlib.suppress(Exception):  # the heartbeat would expire anyway
                self._redis.delete(BEAT_KEY)
        self.lock.release()
        super().close()

    @property
    def info(self) -> str:
        return "    . db -> schedules in PostgreSQL (lem schedule list)"


def main() -> None:
    """`lem-beat`: celery beat with the database scheduler; further arguments go to `celery beat`."""
    try:
        app.start(["beat", "--scheduler", "lem_planner.beat:ScheduleScheduler", "--loglevel", "INFO",
                   *sys.argv[1:]])
    except AnotherBeat as exc:  # celery has redirected sys.stderr to its log by now: write to the real one
        print(f"error: {exc}", file=sys.__stderr__)
        sys.exit(1)


if __name__ == "__main__":
    main()
