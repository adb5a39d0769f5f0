"""Beacons (``lem_shared.wire.heartbeat``) in the database's ``beacons`` table, for a broker that is not Redis.

Lifetimes count on the database's clock, not the writer's, so processes on hosts whose clocks disagree still
agree on what is alive. Expired rows are ignored when read and removed, a while later, by the next write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from lem_shared.db.clock import database_now
from lem_shared.db.models import Beacon
from lem_shared.db.session import READ_ONLY, engine_for
from lem_shared.wire.heartbeat import BeaconsAway

# Expired rows are kept this long (nobody reads them) and then removed by a write.
_PURGE_AFTER_S = 600.0


class DatabaseBeacons:
    def __init__(self, database_url: str) -> None:
        self.engine = engine_for(database_url)

    def put(self, items: Iterable[tuple[str, Mapping[str, Any]]], ttl_s: float) -> None:
        rows = [(key, json.dumps(dict(value))) for key, value in items]
        if not rows:
            return
        try:
            with self.engine.begin() as connection:
                now = database_now(connection)
                connection.execute(
                    delete(Beacon).where(
                        Beacon.key.in_([key for key, _ in rows]) | (Beacon.expires_at < now - _PURGE_AFTER_S)
                    )
                )
                connection.execute(
                    insert(Beacon),
                    [{"key": key, "value": value, "expires_at": now + ttl_s} for key, value in rows],
                )
        except SQLAlchemyError as error:
            raise BeaconsAway(f"database: {error}") from error

    def _live(self, where: Any) -> dict[str, dict[str, Any]]:
        try:
            with self.engine.connect().execution_options(**{READ_ONLY: True}) as connection:
                now = database_now(connection)
                found = connection.execute(
                    select(Beacon.key, Beacon.value).where(where, Beacon.expires_at > now).order_by(Beacon.key)
                ).all()
        except SQLAlchemyError as error:
            raise BeaconsAway(f"database: {error}") from error
        return {key: json.loads(value) for key, value in found}

    def get(self, key: str) -> dict[str, Any] | None:
        return self._live(Beacon.key == key).get(key)

    def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        return self._live(Beacon.key.startswith(prefix, autoescape=True))

    def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(Beacon).where(Beacon.key.in_(keys)))
        except SQLAlchemyError as error:
            raise BeaconsAway(f"database: {error}") from error

    def up_s(self) -> float:
        return math.inf

    def close(self) -> None:
        """The engine is shared by the process (``engine_for``): nothing to close."""
