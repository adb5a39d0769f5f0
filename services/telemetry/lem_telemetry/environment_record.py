"""The host's environment snapshot, stored once per distinct environment when telemetry starts.

Identical snapshots (by ``environment_hash``) share one ``environments`` row. A database error is logged,
never raised: telemetry samples whether or not this record could be written.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lem_shared.db.models import Environment
from lem_shared.device.environment import environment_hash, host_environment, is_unavailable

log = logging.getLogger(__name__)


def _first_line(error: SQLAlchemyError) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def store_environment(engine: Engine, snapshot: dict[str, Any]) -> int:
    """The id of the row holding this snapshot's hash, inserting the snapshot when the hash is new."""
    digest = snapshot["hash"]
    find = select(Environment.id).where(Environment.hash == digest)
    with engine.begin() as conn:
        found = conn.scalar(find)
    if found is not None:
        return found
    try:
        with engine.begin() as conn:
            return conn.execute(
                insert(Environment).values(hash=digest, data=snapshot).returning(Environment.id)
            ).scalar_one()
    except IntegrityError:  # another process inserted the same environment since we looked
        with engine.begin() as conn:
            return conn.execute(find).scalar_one()


def summary(snapshot: dict[str, Any]) -> str:
    """One line: the GPUs, driver and CUDA driver, or why there are no GPUs."""
    gpus = snapshot.get("gpus")
    if is_unavailable(gpus) or not gpus:
        return f"{snapshot.get('host')}: no GPUs ({gpus or 'none found'})"
    names = ", ".join(str(gpu.get("name", "?")) for gpu in gpus)
    first = gpus[0]
    return (
        f"{snapshot.get('host')}: {len(gpus)} GPU(s) ({names}), driver {first.get('driver_version')}, "
        f"CUDA driver {first.get('cuda_driver_version')}"
    )


def record_host_environment(engine: Engine) -> int | None:
    """Store this host's snapshot (``kind: host``); the environment id, or None when it could not be stored."""
    snapshot = {"kind": "host", **host_environment()}
    snapshot["hash"] = environment_hash(snapshot)
    try:
        environment_id = store_environment(engine, snapshot)
    except SQLAlchemyError as error:
        log.warning("host environment %s; not recorded: %s", summary(snapshot), _first_line(error))
        return None
    log.info("host environment %s; recorded as environment %d", summary(snapshot), environment_id)
    return environment_id


def record_host_environment_in_background(engine: Engine) -> threading.Thread:
    """``record_host_environment`` in a thread of its own, so a slow database never delays the first sample."""
    thread = threading.Thread(target=record_host_environment, args=(engine,), name="host-environment", daemon=True)
    thread.start()
    return thread
