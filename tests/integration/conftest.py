"""The real stack for integration tests: a fresh PostgreSQL database migrated with Alembic, Redis databases of
their own, and real Celery workers (control + pytorch) started as subprocesses from their entry points."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from lem_shared.db.migrate import ensure_database, upgrade
from lem_shared.settings import get_settings

BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get("LEM_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LEM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Each test session takes two Redis databases of its own, so concurrent sessions on one machine never share
# queues (a worker of one session would otherwise take another's tasks).
_FIRST = 2 + 2 * secrets.randbelow(5)  # (2, 3) … (10, 11); the telemetry tests use 13
BROKER_DB, RESULTS_DB = _FIRST, _FIRST + 1
# For the stack's processes only: one torch thread per pytorch worker, as `make up` gives the local one. With
# torch's default (a thread per core) on a 2-core machine shared with other work, the threads wait on each other:
# a tiny-model run took 60-75 s instead of 6 s, most of the suite's time. LEM_TORCH_THREADS set by the caller wins.
PROCESS_ENV = {"LEM_TORCH_THREADS": os.environ.get("LEM_TORCH_THREADS", "1")}


def restore_environment(saved: dict[str, str | None]) -> None:
    """Put back the variables a fixture changed (``saved``: their values before, None for unset) and the settings."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


def drop_database(name: str) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """Environment for every process of the test stack; also applied to this process's settings."""
    name = f"lem_test_{secrets.token_hex(4)}"
    database_url = str(make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    for db in (BROKER_DB, RESULTS_DB):
        redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()
    env = {
        "LEM_DATABASE_URL": database_url,
        "LEM_BROKER_URL": f"{REDIS_URL}/{BROKER_DB}",
        "LEM_RESULT_BACKEND": f"{REDIS_URL}/{RESULTS_DB}",
        "LEM_ENERGY_WAIT_S": "2",
        "HF_HUB_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    upgrade(database_url)
    yield {**os.environ, **env, **PROCESS_ENV}
    restore_environment(saved)
    drop_database(name)


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"lem_scratch_{secrets.token_hex(4)}"
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    ensure_database(url)
    yield url
    drop_database(name)


class Workers:
    """Real Celery worker processes, started from the same entry points `make up` uses."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env, self.log_dir, self.procs = env, log_dir, {}

    def start(self, name: str, *argv: str) -> None:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed when the process is stopped
        self.procs[name] = (
            subprocess.Popen(
                [str(BIN / argv[0]), *argv[1:]],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
            log,
        )

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def wait_ready(self, app, names: list[str], timeout: float = 90) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                replies = {next(iter(r)) for r in app.control.ping(timeout=1.0)}
            except (redis.RedisError, OSError, kombu.exceptions.OperationalError):
                replies = set()  # a broker the test restarted: the first use of an old connection fails
                time.sleep(0.5)
            if all(any(r.startswith(n + "@") for r in replies) for n in names):
                return
            for name, (proc, _) in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
        raise RuntimeError("workers did not answer ping:\n" + "\n".join(self.log(n)[-2000:] for n in self.procs))

    def stop(self, names: list[str] | None = None) -> None:
        """Stop the named workers (all by default) with a warm shutdown, killing what does not stop in 60 s."""
        stopping = {name: self.procs.pop(name) for name in (list(self.procs) if names is None else names)}
        for proc, _ in stopping.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in stopping.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


@pytest.fixture(scope="session")
def celery_app(stack_env: dict[str, str]):  # noqa: ANN201
    from lem_shared.wire.celery_app import make_celery

    return make_celery("lem-tests")


@pytest.fixture(scope="session")
def workers(stack_env: dict[str, str], celery_app, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:  # noqa: ANN001
    stack = Workers(stack_env, tmp_path_factory.mktemp("worker-logs"))
    stack.start("control", "lem-control")
    stack.start("pytorch", "lem-worker-pytorch")
    try:
        stack.wait_ready(celery_app, ["control", "pytorch"])
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def lem(stack_env: dict[str, str]):  # noqa: ANN201
    """Run the real `lem` command line against the test stack."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "lem"), *args], env=stack_env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def serving_campaign(workers, lem, tmp_path_factory: pytest.TempPathFactory) -> int:  # noqa: ANN001
    """The id of the shared serving campaign (tests/integration/serving.py), run to its end on the test stack."""
    import json

    import yaml

    from tests.integration.serving import SERVING

    path = tmp_path_factory.mktemp("serving") / "serving.yaml"
    path.write_text(yaml.safe_dump(SERVING))
    result = lem("campaign", "run", str(path), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    return max(c["id"] for c in listed if c["name"] == SERVING["name"])
