"""The checks of ``lem doctor``: is everything a campaign needs up? Which stack (servers or embedded, and why), the
broker, the database (at the Alembic head), Celery workers per queue, and the telemetry heartbeats per host and
GPU; each failed check says how to fix it (the command, ``lem_planner.cli.doctor``, prints them and exits 1 when
something needed is down)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import redis
from rich.text import Text
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from lem_planner.progress import Steps
from lem_shared.redact import redact
from lem_shared.settings import Settings, get_settings, is_embedded_broker, is_redis
from lem_shared.wire.heartbeat import BeaconsAway, beacons, read_heartbeats
from lem_shared.wire.queues import QueueName

Status = Literal["ok", "warn", "fail"]
# A GPU heartbeat whose last sample is older than this is stale (the daemon beats about every second).
STALE_AFTER_S = 5.0
TIMEOUT_S = 3.0
# A broker that accepts connections but never answers (stopped, overloaded, a firewall dropping packets) fails the
# probe after this long: one attempt, no retries, since doctor is asked "is it up?" and not "wait until it is".
BROKER_TIMEOUT_S = 2.0


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


def _first_line(error: BaseException) -> str:
    text = redact(str(getattr(error, "orig", None) or error).strip())
    return text.splitlines()[0] if text else type(error).__name__


STACK_RULE = (
    "LEM_BROKER_URL and LEM_DATABASE_URL name the broker and the database, and then exactly those are used; each "
    "one left unset is Redis on 127.0.0.1:6379 or PostgreSQL on 127.0.0.1:5432 when one answers there, else its "
    "embedded stand-in (a broker folder, SQLite) under LEM_EMBEDDED_DIR"
)


def check_stack(settings: Settings) -> Check:
    """Which stack this process uses and why (the rule above)."""
    line = settings.stack_line()
    if line is not None:
        return Check("stack", "ok", line + ". The rule: " + STACK_RULE)
    return Check(
        "stack",
        "ok",
        f"servers: broker {redact(settings.broker_url)}, database {redact(settings.database_url)}. "
        "The rule: " + STACK_RULE,
    )


def check_broker(broker_url: str) -> Check:
    if not is_redis(broker_url):
        return _check_other_broker(broker_url)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    fix = "start Redis (`make services`) or set LEM_BROKER_URL"
    try:
        client = redis.Redis.from_url(
            broker_url,
            socket_connect_timeout=BROKER_TIMEOUT_S,
            socket_timeout=BROKER_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        finally:
            client.close()
    except redis.TimeoutError as error:
        return Check(
            "broker",
            "fail",
            f"{redact(broker_url)}: no answer within {BROKER_TIMEOUT_S:g} s ({redact(str(error))})",
            fix,
        )
    except redis.RedisError as error:
        return Check("broker", "fail", f"{redact(broker_url)}: {redact(str(error))}", fix)
    return Check("broker", "ok", redact(broker_url))


def _check_other_broker(broker_url: str) -> Check:
    """The embedded broker (its folder must be writable) or another kombu transport (one connection attempt)."""
    from kombu import Connection

    from lem_shared.wire.celery_app import broker_options

    settings = get_settings()
    try:
        options = broker_options(settings)
        if is_embedded_broker(broker_url):
            folder = settings.broker_folder()
            probe = folder / "messages" / ".doctor-probe"
            probe.write_text("ok")
            probe.unlink()
            return Check("broker", "ok", f"embedded: the folder {folder}")
        with Connection(broker_url, transport_options=options, connect_timeout=BROKER_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
    except OSError as error:
        return Check("broker", "fail", f"{redact(broker_url)}: {redact(str(error))}", "make the folder writable")
    except Exception as error:  # noqa: BLE001 - whatever the transport raises, doctor says it in one line
        return Check("broker", "fail", f"{redact(broker_url)}: {_first_line(error)}", "start it or set LEM_BROKER_URL")
    return Check("broker", "ok", redact(broker_url))


def check_database(database_url: str) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from lem_shared.db.migrate import alembic_config

    where = redact(database_url)
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    backend = make_url(database_url).get_backend_name()
    connect_args: dict[str, Any] = {"connect_timeout": int(TIMEOUT_S)} if backend == "postgresql" else {}
    engine = create_engine(database_url, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError as error:
        return Check(
            "database",
            "fail",
            f"{where}: {_first_line(error)}",
            "start PostgreSQL (`make services`) and migrate it (`lem db upgrade`), or set LEM_DATABASE_URL",
        )
    finally:
        engine.dispose()
    if current != heads:
        now = ", ".join(sorted(current)) or "no schema"
        return Check(
            "database", "fail", f"{where}: at {now}, head is {', '.join(sorted(heads))}", "run `lem db upgrade`"
        )
    return Check("database", "ok", f"{where} at head {', '.join(sorted(heads))}")


def check_workers(broker_ok: bool) -> list[Check]:
    if not broker_ok:
        return [Check("workers", "fail", "cannot ask: the broker is unreachable", "start the broker first")]
    from lem_planner.campaigns import consumers_by_queue
    from lem_planner.sender import sender

    consumers = consumers_by_queue(sender(), timeout=2.0)
    checks = []
    for queue in QueueName:
        workers = sorted(consumers.get(queue.value, []))
        if not workers and ".gpus" in queue.value:
            continue  # a multi-GPU class nobody serves is said only if a campaign needs it (campaign run refuses)
        if workers:
            checks.append(Check(f"queue {queue.value}", "ok", ", ".join(workers)))
        elif queue is QueueName.CONTROL:
            checks.append(
                Check(
                    f"queue {queue.value}",
                    "fail",
                    "no worker: runs are never finalised",
                    "start the control worker: `make up` (or `lem-control`)",
                )
            )
        else:
            checks.append(Check(f"queue {queue.value}", "warn", "no worker: runs of this backend wait"))
    gpu_queues = [q.value for q in QueueName if q is not QueueName.CONTROL]
    if not any(consumers.get(queue) for queue in gpu_queues):
        checks.append(
            Check(
                "engine workers",
                "fail",
                "no worker consumes any backend queue: nothing can run",
                "start one: `make up` starts the pytorch worker (or run `lem-worker-pytorch`)",
            )
        )
    return checks


def check_telemetry(store_ok: bool) -> tuple[list[Check], list[dict[str, Any]]]:
    """``store_ok``: whether the heartbeats' store answers (the broker's Redis, or else the database)."""
    if not store_ok:
        return [Check("telemetry", "fail", "cannot read heartbeats: their store is unreachable", "start it first")], []
    store = beacons()
    try:
        beats = read_heartbeats(store)
    except BeaconsAway as error:
        return [Check("telemetry", "fail", f"cannot read heartbeats: {redact(str(error))}", "start it first")], []
    finally:
        store.close()
    if not beats:
        return [
            Check(
                "telemetry",
                "fail",
                "no telemetry daemon is beating: runs get no energy figures",
                "start it on each GPU host: `make up` (or `lem-telemetry`)",
            )
        ], []
    checks = []
    for beat in beats:
        age = beat.get("age_s")
        age_text = "?" if age is None else f"{age:.1f} s ago"
        if beat["kind"] == "host":
            detail = f"source {beat.get('source')}, {beat.get('gpus', 0)} GPU(s), pid {beat.get('pid')}, {age_text}"
            if beat.get("note"):
                detail += f" ({beat['note']})"
            if rapl := beat.get("rapl"):  # CPU package and DRAM energy; where unreadable, the message has the fix
                detail += f", RAPL {rapl}" + ("" if rapl == "available" else f" ({beat.get('rapl_message')})")
            checks.append(Check(f"telemetry host {beat.get('host')}", "ok", detail))
            continue
        name = f"GPU {beat.get('gpu_uuid')} (index {beat.get('gpu_index')}, {beat.get('host')})"
        power = beat.get("power_w")
        temperature = beat.get("temperature_c")
        detail = (
            f"last sample {age_text}, "
            f"{'?' if power is None else f'{power:.0f}'} W, "
            f"{'?' if temperature is None else f'{temperature:.0f}'} °C, source {beat.get('source')}"
        )
        if beat.get("state") == "lost":
            checks.append(
                Check(
                    name,
                    "warn",
                    "cannot be read: " + detail,
                    "see the telemetry log on that host (GPU lost? `nvidia-smi`)",
                )
            )
        elif age is not None and age > STALE_AFTER_S:
            checks.append(Check(name, "warn", "stale: " + detail, "see the telemetry log on that host"))
        else:
            checks.append(Check(name, "ok", detail))
    return checks, beats


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def run_checks(steps: Steps | None = None) -> tuple[list[Check], list[dict[str, Any]]]:
    """Every check, in order; ``steps`` shows each as it completes and names the one under way."""
    settings = get_settings()
    checks: list[Check] = []

    def done(found: list[Check], next_step: str | None) -> None:
        checks.extend(found)
        if steps is not None:
            for check in found:
                steps.done(Text.assemble((f"{check.status:<4} ", STYLE[check.status]), f"{check.name}: ", check.detail))
            if next_step:
                steps.step(next_step)

    done([check_stack(settings)], "checking the broker")
    broker = check_broker(settings.broker_url)
    done([broker], "checking the database")
    database = check_database(settings.database_url)
    done([database], "asking the workers which queues they consume (2 s)")
    done(check_workers(broker.status == "ok"), "reading the telemetry heartbeats")
    store_ok = (broker if is_redis(settings.broker_url) else database).status == "ok"
    telemetry, beats = check_telemetry(store_ok)
    done(telemetry, None)
    return checks, beats
