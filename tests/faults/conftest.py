"""Fault injection on a stack of the tests' own: a private Redis and a private PostgreSQL that the tests may kill,
stop and restart (on the same ports) without touching the machine's shared servers, and real Celery workers.

``fault_stack`` (per test module) starts both servers and migrates a database; ``stack.env`` is the environment
every process of the stack gets (workers, control, ``lem``), ``stack.workers`` starts and stops real workers from
their entry points, ``stack.redis`` / ``stack.postgres`` are the servers (``kill()``, ``start()``, ``stop()``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from lem_shared.settings import get_settings
from tests.integration.conftest import PROCESS_ENV, Workers, restore_environment
from tests.integration.telemetry_helpers import PG_BIN, PrivatePostgres, _free_port, user_exists


class PrivateRedis:
    """A redis-server of the test's own on a fixed free port, keeping nothing on disk (as the machine's)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="lem-redis-"))
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = open(self.root / "redis.log", "a")  # noqa: SIM115 - the server's lifetime
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url(), socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"private redis on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does; every key is gone (nothing is kept on disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class FaultStack:
    redis: PrivateRedis
    postgres: PrivatePostgres
    env: dict[str, str]
    workers: Workers


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: the fault-injection tests need a private Redis")
    if not (PG_BIN / "initdb").exists():
        pytest.fail(
            f"initdb is not installed at {PG_BIN} (set LEM_TEST_PG_BIN): the fault tests need a private PostgreSQL"
        )
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not user_exists("postgres")):
        pytest.fail("running as root without runuser and a 'postgres' user: initdb refuses to run as root")
    server, broker = PrivatePostgres(), PrivateRedis()
    server.start()
    broker.start()
    database_url = server.migrated_database("lem")
    env = {
        "LEM_DATABASE_URL": database_url,
        "LEM_BROKER_URL": broker.url(0),
        "LEM_RESULT_BACKEND": broker.url(1),
        "LEM_ENERGY_WAIT_S": "2",
        "HF_HUB_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    processes = {**os.environ, **env, **PROCESS_ENV}
    stack = FaultStack(broker, server, processes, Workers(processes, tmp_path_factory.mktemp("fault-logs")))
    try:
        yield stack
    finally:
        stack.workers.stop()
        restore_environment(saved)
        broker.remove()
        server.remove()
