"""The one-beat lock across a database outage: real ``lem-beat`` processes against a private PostgreSQL that is
stopped for about 10 s and started again. Afterwards the lock is held again by exactly one beat, only that beat
fires, a second beat is refused (or, started with ``--standby``, waits and takes over when the holder dies), and
every due time fires exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, text

from lem_shared.db.models import Schedule, ScheduleFiring
from lem_shared.db.session import get_engine, session_scope
from lem_shared.dispatch import aware
from tests.faults.conftest import FaultStack
from tests.integration.beats import Beats
from tests.integration.telemetry_helpers import wait_for

BIN = Path(sys.executable).parent
OUTAGE_S = 10
# Due times 1 s apart (the beat ticks every second): 40 of them outlast the standby test's outage and takeover,
# which took about 20 s on the shared 2-core machine, by as much again.
EVERY_S = 1


@pytest.fixture
def beats(fault_stack: FaultStack, tmp_path: Path) -> Iterator[Beats]:
    stack = Beats(fault_stack.env, tmp_path)
    try:
        yield stack
    finally:
        for name in list(stack.procs):
            stack.stop(name, signal.SIGKILL)


def add_schedule(stack: FaultStack, tmp_path: Path, times: int) -> tuple[int, list[datetime]]:
    """A schedule every EVERY_S, ``times`` times, catching up every due time a beat missed; its id and due times."""
    path = tmp_path / f"beat-fault-{time.monotonic_ns()}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": path.stem,
                "cycles": 1,
                "experiment": {
                    "backend": "vllm",
                    "model": "random:llama-tiny",
                    "workload": {"num_prompts": 2, "input_len": 16, "output_len": 8},
                },
            }
        )
    )
    result = subprocess.run(
        [
            str(BIN / "lem"),
            "schedule",
            "add",
            str(path),
            "--every",
            f"{EVERY_S}s",
            "--times",
            str(times),
            "--catch-up",
            str(times),
            "--json",
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    schedule_id = json.loads(result.stdout)["id"]
    with session_scope() as s:
        row = s.get(Schedule, schedule_id)
        assert row is not None and row.next_due_at is not None
        first = aware(row.next_due_at)
    return schedule_id, [first + timedelta(seconds=EVERY_S * k) for k in range(times)]


def due_times(schedule_id: int) -> list[datetime]:
    with session_scope() as s:
        return [
            aware(d)
            for d in s.scalars(
                select(ScheduleFiring.due_at)
                .where(ScheduleFiring.schedule_id == schedule_id)
                .order_by(ScheduleFiring.due_at)
            )
        ]


def finished(schedule_id: int) -> bool:
    with session_scope() as s:
        row = s.get(Schedule, schedule_id)
        return row is not None and row.next_due_at is None


def lock_holders() -> list[str]:
    """application_name of each session holding the beat lock (``lem-beat pid N on HOST``)."""
    from lem_planner.beat import BEAT_LOCK_ID

    with get_engine().connect() as c:
        return list(
            c.scalars(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.classid = 0 AND l.objid = :k AND l.granted"
                ),
                {"k": BEAT_LOCK_ID},
            )
        )


def database_outage(stack: FaultStack) -> None:
    get_engine().dispose()  # this process's pooled connections would be dead after the restart
    stack.postgres.stop()
    time.sleep(OUTAGE_S)
    stack.postgres.start()


def test_after_a_database_outage_the_beat_takes_its_lock_again_and_a_second_beat_is_refused(
    fault_stack: FaultStack, beats: Beats, tmp_path: Path
) -> None:
    schedule_id, expected = add_schedule(fault_stack, tmp_path, times=14)
    first = beats.start("beat-1")
    wait_for(lambda: len(due_times(schedule_id)) >= 2, 60, "two firings by the first beat", poll=0.5)

    database_outage(fault_stack)
    wait_for(
        lambda: lock_holders() == [f"lem-beat pid {first.pid} on {os.uname().nodename}"[:63]],
        30,
        "the first beat holding its lock again",
        poll=0.5,
    )

    second = subprocess.run([str(BIN / "lem-beat")], env=fault_stack.env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another beat is running (lem-beat pid " in second.stderr and "Traceback" not in second.stderr

    wait_for(lambda: finished(schedule_id), 60, "the schedule's last firing", poll=0.5)
    assert due_times(schedule_id) == expected  # the outage's due times fired late, each once
    assert len(beats.fired("beat-1", schedule_id)) == len(expected), beats.log("beat-1")[-3000:]


def test_two_beats_through_a_database_outage_one_fires_and_the_standby_takes_over(
    fault_stack: FaultStack, beats: Beats, tmp_path: Path
) -> None:
    schedule_id, expected = add_schedule(fault_stack, tmp_path, times=40)
    beats.start("beat-1")
    wait_for(lambda: len(due_times(schedule_id)) >= 2, 60, "two firings by the first beat", poll=0.5)
    beats.start("beat-2", "--standby")
    wait_for(lambda: "standing by" in beats.log("beat-2"), 60, "the second beat standing by", poll=0.5)
    assert beats.fired("beat-2", schedule_id) == []

    database_outage(fault_stack)
    marks = {name: len(beats.log(name)) for name in ("beat-1", "beat-2")}
    wait_for(lambda: len(lock_holders()) == 1, 30, "one beat holding the lock again", poll=0.5)
    time.sleep(4 * EVERY_S)
    assert not finished(schedule_id), "the schedule ended before the outage was over: nothing left to observe"
    holders = lock_holders()
    assert len(holders) == 1, holders
    firing = [name for name in marks if beats.fired(name, schedule_id, since=marks[name])]
    assert len(firing) == 1, {name: beats.log(name)[marks[name] :][-2000:] for name in marks}
    holder = firing[0]
    assert holders == [f"lem-beat pid {beats.procs[holder][0].pid} on {os.uname().nodename}"[:63]]
    other = next(name for name in marks if name != holder)
    assert beats.procs[other][0].poll() is None, beats.log(other)[-3000:]  # standing by, not gone

    # the holder dies: the one standing by takes the lock and fires the rest
    assert not finished(schedule_id), "nothing left for the standby to fire"
    beats.stop(holder, signal.SIGKILL)
    since = len(beats.log(other))
    wait_for(lambda: beats.fired(other, schedule_id, since=since), 30, "the standby firing", poll=0.5)
    wait_for(lambda: finished(schedule_id), 60, "the schedule's last firing", poll=0.5)
    assert due_times(schedule_id) == expected  # none lost, none repeated
    fired = beats.fired("beat-1", schedule_id) + beats.fired("beat-2", schedule_id)
    assert sorted(fired) == sorted(set(fired)) and len(fired) == len(expected)
