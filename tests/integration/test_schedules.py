"""Campaigns on a schedule on the real stack: a real celery beat process (`lem-beat`) killed and restarted fires
every due time exactly once; one beat at a time; the overlap policy (queue / skip) recorded per firing; a queued
campaign measured after the one it queued behind; `lem schedule` commands and their errors."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from lem_shared.db.models import Campaign, CampaignStatus, Experiment, Run, Schedule, ScheduleFiring
from lem_shared.db.session import session_scope
from lem_shared.dispatch import aware
from tests.integration.beats import Beats
from tests.integration.telemetry_helpers import wait_for

BIN = Path(sys.executable).parent
TINY = {
    "model": "random:llama-tiny",
    "workload": {"num_prompts": 2, "input_len": 16, "output_len": 8},
    "measurement": {"min_window_s": 0.5, "warmup_min": 1, "warmup_max": 2, "idle_gap_s": 0, "baseline_idle_s": 0},
}


def campaign_file(tmp_path: Path, backend: str = "vllm", **spec: object) -> tuple[Path, str]:
    """A one-run campaign file of a unique name. No vllm worker runs in the tests, so a vllm campaign stays
    running with its run pending: what a long campaign on the same GPUs looks like, without the compute."""
    name = f"sched-{secrets.token_hex(3)}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "cycles": 1, "experiment": {**TINY, "backend": backend}, **spec}))
    return path, name


def firings(schedule_id: int) -> list[ScheduleFiring]:
    with session_scope() as s:
        rows = list(
            s.scalars(
                select(ScheduleFiring).where(ScheduleFiring.schedule_id == schedule_id).order_by(ScheduleFiring.due_at)
            )
        )
        s.expunge_all()
        return rows


def schedule_row(schedule_id: int) -> Schedule:
    with session_scope() as s:
        row = s.get(Schedule, schedule_id)
        assert row is not None
        s.expunge_all()
        return row


def campaigns_named(name: str) -> list[Campaign]:
    with session_scope() as s:
        rows = list(s.scalars(select(Campaign).where(Campaign.name == name).order_by(Campaign.id)))
        s.expunge_all()
        return rows


def running_on(backend: str) -> bool:
    with session_scope() as s:
        return (
            s.scalar(
                select(Campaign.id)
                .join(Experiment, Experiment.campaign_id == Campaign.id)
                .where(Campaign.status == CampaignStatus.RUNNING, Experiment.backend == backend)
                .limit(1)
            )
            is not None
        )


@pytest.fixture
def beats(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Beats]:
    stack = Beats(stack_env, tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def cleanup(celery_app, lem) -> Iterator[list[int]]:  # noqa: ANN001
    """Schedules to remove after the test; their campaigns are cancelled so no later test sees them running."""
    from lem_planner.campaigns import cancel_campaign

    schedule_ids: list[int] = []
    yield schedule_ids
    for schedule_id in schedule_ids:
        for f in firings(schedule_id):
            if f.campaign_id:
                cancel_campaign(celery_app, f.campaign_id)
        lem("schedule", "remove", str(schedule_id))


def add(lem, *args: str) -> dict:  # noqa: ANN001
    result = lem("schedule", "add", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def beat_heartbeat() -> dict | None:
    from lem_planner.schedules import beat_presence

    return beat_presence()


def test_beat_killed_and_restarted_fires_every_due_time_exactly_once(
    stack_env: dict[str, str],
    lem,
    beats: Beats,
    cleanup: list[int],
    tmp_path: Path,  # noqa: ANN001
) -> None:
    path, name = campaign_file(tmp_path)
    # The beat ticks before the schedule exists: its due times then run from a live beat, not from a process
    # start that a loaded machine may stretch past all of them.
    first = beats.start("beat-1")
    wait_for(
        lambda: (b := beat_heartbeat()) and b["pid"] == first.pid and b["ticks"] >= 1, 60, "the first beat's first tick"
    )
    # every 2 s, 6 times; catch-up 6: every due time that passes while no beat runs is fired when one is back
    schedule = add(lem, str(path), "--every", "2s", "--times", "6", "--catch-up", "6")
    cleanup.append(schedule["id"])
    start = datetime.fromisoformat(schedule["start_at"])
    expected = [start + timedelta(seconds=2 * k) for k in range(6)]

    wait_for(lambda: len(firings(schedule["id"])) >= 2, 60, "two firings by the first beat")
    # killed at once (the refused second beat is tried later, while beat-3 runs): starting a process can take
    # longer than the schedule's remaining due times on a loaded machine
    beats.stop("beat-1", signal.SIGKILL)  # no goodbye: its lock goes with its database connection
    fired_before = len(firings(schedule["id"]))
    next_due = schedule_row(schedule["id"]).next_due_at
    assert next_due is not None, f"all {fired_before} due times fired before the first beat was killed"
    due_while_down = aware(next_due)
    wait_for(lambda: datetime.now(UTC) > due_while_down + timedelta(seconds=0.5), 10, "a due time with no beat")
    assert len(firings(schedule["id"])) == fired_before  # nothing fires without a beat
    restarted_at = datetime.now(UTC)

    beats.start("beat-2")
    wait_for(lambda: schedule_row(schedule["id"]).next_due_at is None, 60, "the schedule's last firing")

    rows = firings(schedule["id"])
    assert [aware(f.due_at) for f in rows] == expected  # each due time once: none lost, none repeated
    assert {f.outcome for f in rows} <= {"created", "queued"} and all(f.overlap == "queue" for f in rows)
    made = [c.id for c in campaigns_named(name)]
    assert sorted(f.campaign_id for f in rows) == made and len(made) == 6
    late = [f for f in rows if aware(f.due_at) < restarted_at <= aware(f.fired_at)]
    assert late, "the due time that passed while no beat ran was fired by the restarted beat"
    assert all(f.outcome == "queued" for f in rows[1:])  # each behind the previous one, still running (no vllm worker)

    # one more restart (a clean one): the new beat ticks and finds nothing to fire again
    beats.stop("beat-2")
    beat = beats.start("beat-3")
    wait_for(
        lambda: (b := beat_heartbeat()) and b["pid"] == beat.pid and b["ticks"] >= 3,
        60,
        "three ticks of the third beat",
    )
    # exactly one beat: a second one is refused, naming the first
    second = subprocess.run([str(BIN / "lem-beat")], env=stack_env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another beat is running (lem-beat pid " in second.stderr and "Traceback" not in second.stderr
    assert [aware(f.due_at) for f in firings(schedule["id"])] == expected
    assert len(campaigns_named(name)) == 6

    listed = json.loads(lem("schedule", "list", "--json").stdout)
    ours = next(s for s in listed if s["id"] == schedule["id"])
    assert ours["status"] == "finished" and ours["occurrences"] == 6 and sum(ours["outcomes"].values()) == 6


def test_the_first_due_time_is_the_start_even_when_storing_the_schedule_took_longer(
    stack_env: dict[str, str], cleanup: list[int], tmp_path: Path
) -> None:
    """A slow `schedule add` (validating the file on a loaded machine) once skipped the first firing of --every."""
    from lem_planner.schedules import add_schedule, build_timing, iso

    path, _ = campaign_file(tmp_path)
    t0 = datetime.now(UTC).replace(microsecond=0)
    timing = build_timing(cron=None, every="2s", at=None, until=None, times=3, tz="UTC", now=t0)
    summary = add_schedule(str(path), timing, "queue", 3, now=t0 + timedelta(seconds=5))
    cleanup.append(summary["id"])
    assert summary["start_at"] == summary["next_due_at"] == iso(t0 + timedelta(seconds=2))


def test_overlap_queue_and_skip_are_recorded_per_firing(
    stack_env: dict[str, str],
    lem,
    celery_app,
    cleanup: list[int],
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Firing in process with a given time (the beat's own function), so the due times are chosen, not waited."""
    from lem_planner.campaigns import cancel_campaign
    from lem_planner.schedules import fire_due

    path, name = campaign_file(tmp_path)
    t0 = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    queue = add(lem, str(path), "--every", "1h", "--at", t0.isoformat(), "--catch-up", "3")
    skip = add(lem, str(path), "--every", "1h", "--at", (t0 + timedelta(minutes=30)).isoformat(), "--overlap", "skip")
    cleanup += [queue["id"], skip["id"]]
    path.write_text("name: edited\n")  # the schedules run what the file held when they were added
    first_outcome = "queued" if running_on("vllm") else "created"

    fire_due(celery_app, now=t0 + timedelta(hours=2, seconds=1))
    q = firings(queue["id"])
    assert [(f.outcome, aware(f.due_at)) for f in q] == [
        (first_outcome, t0),
        ("queued", t0 + timedelta(hours=1)),
        ("queued", t0 + timedelta(hours=2)),
    ]
    assert f"behind campaign {q[0].campaign_id} ({name}) on vllm" in q[1].detail
    s = firings(skip["id"])
    # T0+30m passed "while no beat ran" beyond catch-up 1: missed; T0+90m: skipped, the queue schedule's runs go on
    assert [(f.outcome, aware(f.due_at), f.campaign_id, f.overlap) for f in s] == [
        ("missed", t0 + timedelta(minutes=30), None, "skip"),
        ("skipped", t0 + timedelta(minutes=90), None, "skip"),
    ]
    assert f"still running: campaign {q[0].campaign_id} ({name}) on vllm" in s[1].detail
    assert [c.name for c in campaigns_named(name)] == [name] * 3

    for f in q:  # the vllm campaigns end: the skip schedule's next firing creates its campaign
        cancel_campaign(celery_app, f.campaign_id)
    if first_outcome == "created":
        fire_due(celery_app, now=t0 + timedelta(hours=2, minutes=31))
        assert firings(skip["id"])[-1].outcome == "created"

    # pause: nothing fires; resume: from the next due time on the grid; history through the command line
    assert lem("schedule", "pause", str(skip["id"])).returncode == 0
    assert fire_due(celery_app, now=t0 + timedelta(hours=5)) and len(firings(skip["id"])) == len(s) + (
        first_outcome == "created"
    )
    resumed = lem("schedule", "resume", str(skip["id"]))
    assert resumed.returncode == 0 and "resumed; next " in resumed.stdout
    history = json.loads(lem("schedule", "history", str(skip["id"]), "--json").stdout)
    assert [h["outcome"] for h in history][:2] == ["missed", "skipped"]
    assert all(h["overlap"] == "skip" for h in history)


def test_a_queued_campaign_is_measured_after_the_one_it_queued_behind(
    workers,
    celery_app,
    cleanup: list[int],
    lem,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Two firings at once on the one pytorch worker (one GPU): the second campaign's run starts only after the
    first campaign's run has left the worker; both are measured."""
    from lem_planner.schedules import fire_due

    path, name = campaign_file(tmp_path, backend="pytorch")
    t0 = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    schedule = add(lem, str(path), "--every", "1h", "--at", t0.isoformat(), "--catch-up", "2", "--times", "2")
    cleanup.append(schedule["id"])
    fired = fire_due(celery_app, now=t0 + timedelta(hours=1, seconds=1))
    assert [f.outcome for f in fired] == ["created", "queued"]
    first, second = (f.campaign_id for f in fired)

    def done() -> bool:
        with session_scope() as s:
            return all(s.get(Campaign, c).status != CampaignStatus.RUNNING for c in (first, second))

    wait_for(done, 120, "both campaigns to end")
    with session_scope() as s:
        a, b = (s.scalars(select(Run).where(Run.campaign_id == c)).one() for c in (first, second))
        assert a.status == b.status == "done", (a.error, b.error)
        assert aware(b.started_at) >= aware(a.window_end)


def test_schedule_commands_refuse_bad_input_in_one_line(lem, tmp_path: Path) -> None:  # noqa: ANN001
    path, _ = campaign_file(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "experiment": {**TINY, "backend": "pytorch", "batch_size": 0}}))
    inf = tmp_path / "inf.yaml"  # used to be stored, then fail in PostgreSQL on every beat tick
    inf.write_text(yaml.safe_dump({"name": "inf", "config_gap_s": float("inf"), "experiment": TINY}))
    cases = [
        (("add", str(path), "--every", "6x"), "error: --every: '6x' is not a duration"),
        (("add", str(path), "--cron", "0 2 * *"), "error: --cron: '0 2 * *' has 4 field(s); a cron expression has 5"),
        (("add", str(path), "--cron", "61 * * * *"), "field 1 (minute) '61' is not valid: it takes 0-59"),
        (("add", str(path), "--at", "2001-01-01T00:00"), "error: --at: 2001-01-01T00:00:00Z is in the past"),
        (("add", str(path), "--every", "1h", "--overlap", "later"), "'later' is not one of"),
        (("add", str(bad), "--every", "1h"), "batch_size"),
        (("add", str(inf), "--every", "1h"), "config_gap_s: must be a finite number (got inf)"),
        (("pause", "987654"), "error: no schedule 987654; `lem schedule list` shows the ones there are"),
        (("history", "987654"), "error: no schedule 987654"),
        (("remove", "987654"), "error: no schedule 987654"),
    ]
    for args, message in cases:
        result = lem("schedule", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


def test_a_stored_campaign_that_no_longer_plans_is_recorded_once_as_failed(celery_app, tmp_path: Path) -> None:  # noqa: ANN001
    """A schedule stored before non-finite numbers were refused (``config_gap_s: .inf``, which PostgreSQL's JSON
    cannot hold): its due time is recorded once as a failed firing and the schedule moves on; a second tick at
    the same time finds nothing due."""
    from lem_planner.schedules import fire_due

    t0 = (datetime.now(UTC) + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    text = yaml.safe_dump(
        {
            "name": f"inf-{secrets.token_hex(3)}",
            "cycles": 1,
            "config_gap_s": float("inf"),
            "experiment": {**TINY, "backend": "vllm"},
        }
    )
    with session_scope() as s:
        row = Schedule(
            name="inf",
            source_path=str(tmp_path / "inf.yaml"),
            campaign_text=text,
            spec_hash="0" * 64,
            kind="every",
            every_s=3600.0,
            timezone="UTC",
            start_at=t0,
            overlap="queue",
            catch_up=1,
            paused=False,
            next_due_at=t0,
            occurrences=0,
        )
        s.add(row)
        s.flush()
        schedule_id = row.id
    try:
        fired = fire_due(celery_app, now=t0 + timedelta(seconds=1))
        again = fire_due(celery_app, now=t0 + timedelta(seconds=1))
        ours = firings(schedule_id)
        assert [(f.outcome, aware(f.due_at)) for f in ours] == [("failed", t0)]
        assert "config_gap_s: must be a finite number" in (ours[0].detail or "")
        assert not [f for f in again if f.schedule_id == schedule_id]
        assert [f.outcome for f in fired if f.schedule_id == schedule_id] == ["failed"]
        assert aware(schedule_row(schedule_id).next_due_at) == t0 + timedelta(hours=1)
    finally:
        with session_scope() as s:
            s.execute(Schedule.__table__.delete().where(Schedule.id == schedule_id))
