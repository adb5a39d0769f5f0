"""Test helper: the broker's Redis as the tests need it, both as the stack's beacons (heartbeats, cancel flags:
``lem_shared.wire.heartbeat.RedisBeacons``) and as a raw client for looking at queues (``llen``, ``lindex``,
``scan_iter``, ``flushdb``), which a test asks of Redis directly."""

from __future__ import annotations

from typing import Any

from lem_shared.settings import get_settings
from lem_shared.wire.heartbeat import RedisBeacons


class BrokerRedis(RedisBeacons):
    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def redis_client(url: str | None = None) -> BrokerRedis:
    return BrokerRedis(url or get_settings().broker_url, timeout_s=2.0)
