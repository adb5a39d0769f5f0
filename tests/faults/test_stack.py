"""The private stack itself: its Redis and PostgreSQL really go away when killed or stopped, and come back on the
same address (what every fault test relies on)."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.faults.conftest import FaultStack


def test_the_private_servers_die_and_come_back_on_the_same_address(fault_stack: FaultStack) -> None:
    client = redis.Redis.from_url(fault_stack.env["LEM_BROKER_URL"], socket_timeout=1)
    client.set("lem-fault-probe", "1")
    fault_stack.redis.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    fault_stack.redis.start()
    assert client.get("lem-fault-probe") is None  # nothing survives a Redis crash: it keeps nothing on disk
    engine = create_engine(fault_stack.env["LEM_DATABASE_URL"], pool_pre_ping=True)
    with engine.connect() as connection:
        assert connection.execute(text("select count(*) from runs")).scalar() == 0
    fault_stack.postgres.stop()
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("select 1"))
    fault_stack.postgres.start()
    with engine.connect() as connection:
        assert connection.execute(text("select 1")).scalar() == 1
    engine.dispose()
