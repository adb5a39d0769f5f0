"""The database's clock, the one every host of a fleet shares: beacon lifetimes count on it, and each host
measures its own clock's offset from it (a worker at a run's claim and end, telemetry every ``CLOCK_CHECK_S``), so
the finaliser can tell when a run's window and its GPU's samples were stamped by clocks that disagree."""

from __future__ import annotations

import time
from typing import NamedTuple

from sqlalchemy import Connection, TextClause, select, text

# Unix seconds on the database's clock (the wall clock when the statement runs, not the transaction's start).
_NOW_SQL = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
}
# How often telemetry records its host's offset; the finaliser looks this far around a run's window for one.
CLOCK_CHECK_S = 30.0
CLOCK_LOOKUP_S = 900.0
# A host this far off the database's clock is worth a warning (its runs' times are that far off), though its
# worker and telemetry, on one clock, still agree.
CLOCK_WARN_S = 0.5
# A run's worker and its GPU's telemetry this far apart are joined by their offsets (the samples shifted onto
# the run's clock); closer, the join is left as it is (the offsets are good to a few milliseconds).
CLOCK_SKEW_S = 0.05


def now_sql(dialect: str) -> TextClause:
    return text(_NOW_SQL.get(dialect, _NOW_SQL["postgresql"]))


def database_now(connection: Connection) -> float:
    return float(connection.scalar(select(now_sql(connection.dialect.name))))


class ClockReading(NamedTuple):
    offset_s: float  # this host's clock minus the database's
    rtt_s: float  # the round trip it was measured in: the offset is good to half of it
    database_time: float  # Unix seconds on the database's clock


def clock_offset(connection: Connection) -> ClockReading:
    """This host's clock against the database's, the database's time taken as read half-way through the round
    trip."""
    before = time.time()
    now = database_now(connection)
    after = time.time()
    return ClockReading((before + after) / 2 - now, after - before, now)
