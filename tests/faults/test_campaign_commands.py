"""`lem campaign cancel` and `status` tell the truth, on the private stack: a campaign that does not exist, one
already finished, a running run nobody measures any more, cancel keys of two databases on one broker, and a
campaign that ended with a failed run."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml
from sqlalchemy import select, update

from lem_shared.db.models import Campaign, Run
from lem_shared.db.session import session_scope
from lem_shared.dispatch import CANCEL_KEY_PREFIX, cancel_requested
from lem_shared.settings import get_settings
from lem_shared.wire.heartbeat import WORKER_KEY_PREFIX, publish_worker_beat
from tests.broker_redis import redis_client
from tests.faults.conftest import FaultStack
from tests.integration.conftest import BIN

RUN = {"model": "random:llama-tiny", "workload": {"num_prompts": 2, "input_len": 32, "output_len": 48}}


def lem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "lem"), *args], env=env, capture_output=True, text=True, timeout=120)


def new_campaign(env: dict[str, str], tmp_path: Path, cycles: int = 3) -> int:
    """A campaign queued with no worker anywhere: its runs stay pending until a test moves them."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "commands", "cycles": cycles, "experiment": RUN}))
    started = lem(env, "campaign", "run", str(path), "--no-wait", "--no-require-workers")
    assert started.returncode == 0, started.stderr
    return max(c["id"] for c in json.loads(lem(env, "campaign", "list", "--json").stdout))


def cancel_keys() -> list[bytes]:
    return list(redis_client().scan_iter(match=CANCEL_KEY_PREFIX + "*"))


@pytest.fixture
def broker(fault_stack: FaultStack) -> Iterator[redis.Redis]:
    connection = redis_client()
    connection.flushdb()
    yield connection
    connection.flushdb()


def test_cancel_of_a_campaign_that_does_not_exist_fails_and_leaves_no_key(
    fault_stack: FaultStack, broker: redis.Redis
) -> None:
    cancelled = lem(fault_stack.env, "campaign", "cancel", "999")
    assert cancelled.returncode == 2  # an id that names nothing is bad input, as in every command
    assert "no campaign 999" in cancelled.stderr and "Traceback" not in cancelled.stderr
    assert "cancelled" not in cancelled.stdout
    assert cancel_keys() == []  # a future campaign 999 is not born cancelled


def test_cancel_of_a_finished_campaign_says_it_had_ended(
    fault_stack: FaultStack, broker: redis.Redis, tmp_path: Path
) -> None:
    campaign_id = new_campaign(fault_stack.env, tmp_path, cycles=1)
    with session_scope() as s:
        s.execute(update(Run).where(Run.campaign_id == campaign_id).values(status="done"))
        s.execute(update(Campaign).where(Campaign.id == campaign_id).values(status="done"))
    cancelled = lem(fault_stack.env, "campaign", "cancel", str(campaign_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"campaign {campaign_id} had already ended (done): nothing cancelled" in cancelled.stdout
    with session_scope() as s:
        assert s.scalar(select(Campaign.status).where(Campaign.id == campaign_id)) == "done"
    assert cancel_keys() == []


def test_cancel_says_what_it_stopped_and_ends_a_run_nobody_measures(
    fault_stack: FaultStack, broker: redis.Redis, tmp_path: Path
) -> None:
    campaign_id = new_campaign(fault_stack.env, tmp_path, cycles=3)
    with session_scope() as s:  # what a worker killed long ago leaves: its run running, its heartbeat gone
        first = s.scalar(select(Run.id).where(Run.campaign_id == campaign_id, Run.position == 0))
        s.execute(
            update(Run)
            .where(Run.id == first)
            .values(
                status="running", worker="ghost@nowhere", attempts=1, started_at=datetime.now(UTC) - timedelta(hours=1)
            )
        )
    cancelled = lem(fault_stack.env, "campaign", "cancel", str(campaign_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "being stopped" not in cancelled.stdout
    assert "2 queued runs dropped" in cancelled.stdout and "1 running run" in cancelled.stdout, cancelled.stdout
    with session_scope() as s:
        statuses = s.scalars(select(Run.status).where(Run.campaign_id == campaign_id)).all()
    assert statuses == ["cancelled"] * 3
    assert cancel_keys() == []  # nothing left to stop


def test_cancel_keys_of_two_databases_on_one_broker_do_not_meet(
    fault_stack: FaultStack, broker: redis.Redis, tmp_path: Path
) -> None:
    other_url = fault_stack.postgres.migrated_database("lem_other")
    other_env = {**fault_stack.env, "LEM_DATABASE_URL": other_url}
    other_id = new_campaign(other_env, tmp_path, cycles=1)
    ours = new_campaign(fault_stack.env, tmp_path, cycles=1)
    with session_scope() as s:  # a run a live worker is measuring, so the cancel sets the key its worker polls
        run = s.scalars(select(Run).where(Run.campaign_id == ours)).one()
        s.execute(
            update(Run)
            .where(Run.id == run.id)
            .values(
                status="running", worker="busy@here", attempts=1, started_at=datetime.now(UTC) - timedelta(seconds=5)
            )
        )
        run_key = run.run_key
    publish_worker_beat(broker, "busy@here", "pytorch", run_key)
    cancelled = lem(fault_stack.env, "campaign", "cancel", str(ours))
    assert cancelled.returncode == 0 and "1 running run is being stopped" in cancelled.stdout, cancelled.stdout
    assert cancel_requested(broker, ours)
    os.environ["LEM_DATABASE_URL"] = other_url
    get_settings.cache_clear()
    try:  # the other database's campaign with the same id, and with its own id, is not cancelled
        assert not cancel_requested(broker, ours) and not cancel_requested(broker, other_id)
    finally:
        os.environ["LEM_DATABASE_URL"] = fault_stack.env["LEM_DATABASE_URL"]
        get_settings.cache_clear()
        broker.delete(WORKER_KEY_PREFIX + "busy@here")


def test_a_campaign_that_ended_with_a_failed_run_shows_its_failures(
    fault_stack: FaultStack, broker: redis.Redis, tmp_path: Path
) -> None:
    from lem_planner.campaigns import close_campaign_if_finished

    campaign_id = new_campaign(fault_stack.env, tmp_path, cycles=2)
    with session_scope() as s:
        first, second = s.scalars(select(Run.id).where(Run.campaign_id == campaign_id).order_by(Run.position)).all()
        s.execute(update(Run).where(Run.id == first).values(status="done"))
        s.execute(update(Run).where(Run.id == second).values(status="failed", error="engine crashed"))
    close_campaign_if_finished(campaign_id)
    status = json.loads(lem(fault_stack.env, "campaign", "status", str(campaign_id), "--json").stdout)
    assert status["status"] == "done" and status["failed"] == 1
    shown = lem(fault_stack.env, "campaign", "status", str(campaign_id)).stdout
    assert "done with 1 failed run" in shown, shown
    listed = lem(fault_stack.env, "campaign", "list").stdout
    assert "done, 1 failed" in listed, listed


def test_a_campaign_whose_last_run_is_failed_by_reclaim_ends(
    fault_stack: FaultStack, broker: redis.Redis, tmp_path: Path
) -> None:
    """No finalise follows a run that reclaim fails (its worker vanished on its last attempt): the scheduler pass
    itself must end the campaign, or it stays `running` and holds its backend's queue."""
    from lem_planner.control_loop import scheduler_pass
    from lem_planner.sender import sender

    campaign_id = new_campaign(fault_stack.env, tmp_path, cycles=1)
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    with session_scope() as s:
        s.execute(
            update(Run)
            .where(Run.campaign_id == campaign_id)
            .values(
                status="running", worker="vanished@gpu-host", attempts=get_settings().max_attempts, started_at=long_ago
            )
        )
    scheduler_pass(sender())
    with session_scope() as s:
        run = s.scalars(select(Run).where(Run.campaign_id == campaign_id)).one()
        campaign = s.get(Campaign, campaign_id)
        assert run.status == "failed" and "vanished" in (run.error or "")
        assert campaign.status == "failed" and campaign.finished_at is not None
