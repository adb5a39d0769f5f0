"""Pacing on the worker, against real Redis and PostgreSQL: the configured gaps, the thermal gap that waits for
the GPU to cool to near its idle temperature (read from telemetry), and cold starts through real workers.

The thermal test stands in for a GPU's telemetry: it writes the samples and the heartbeat the telemetry daemon
would write (same tables, same Redis key), since this machine has no GPU to heat up."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from lem_shared.db.models import Campaign, GpuSample, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.runtime.worker import GpuState, pace
from lem_shared.wire.heartbeat import gpu_key
from lem_shared.wire.messages import RunRequest
from tests.broker_redis import redis_client

GPU = "GPU-standin-thermal-0001"


def request(campaign_id: int, cycle: int, **schedule: object) -> RunRequest:
    return RunRequest(run_key="0" * 64, run_id=1, campaign_id=campaign_id, cycle=cycle, experiment={}, **schedule)  # type: ignore[arg-type]


def test_config_and_cycle_gaps_apply_only_between_runs_of_one_campaign(stack_env) -> None:  # noqa: ANN001
    state, stop = GpuState(), threading.Event()
    gaps = {"config_gap_s": 0.3, "cycle_gap_s": 0.8}
    assert pace(request(1, 0, **gaps), state, None, stop) == {}  # the GPU's first run: no gap
    state.last = (1, 0)
    began = time.monotonic()
    assert pace(request(1, 0, **gaps), state, None, stop) == {"kind": "config", "seconds": 0.3}
    assert pace(request(1, 1, **gaps), state, None, stop) == {"kind": "cycle", "seconds": 0.8}
    assert 1.05 <= time.monotonic() - began < 2.5
    assert pace(request(2, 0, **gaps), state, None, stop) == {}  # another campaign


def test_thermal_gap_waits_until_the_gpu_is_near_its_idle_temperature(stack_env) -> None:  # noqa: ANN001
    now = datetime.now(UTC)
    with session_scope() as s:
        s.add_all(
            [
                GpuSample(
                    host="standin",
                    gpu_uuid=GPU,
                    gpu_index=0,
                    time=now - timedelta(seconds=60 - i),
                    source="standin",
                    temperature_c=31.0 + (i % 2),
                )
                for i in range(10)
            ]
        )  # idle ~31.5 C
    connection = redis_client()

    def heartbeat(temperature: float) -> None:
        connection.put([(gpu_key(GPU), {"time": time.time(), "temperature_c": temperature})], ttl_s=30)

    heartbeat(62.0)
    cooling = threading.Timer(1.5, heartbeat, args=(34.0,))  # cools to within 5 C of idle after 1.5 s
    cooling.start()
    try:
        state = GpuState(last=(999, 0), gpu_uuid=GPU)
        paused = pace(
            request(999, 0, thermal_gap={"within_c": 5.0, "max_wait_s": 30.0}), state, connection, threading.Event()
        )
    finally:
        cooling.cancel()
        connection.delete(gpu_key(GPU))
    thermal = paused["thermal"]
    assert thermal["idle_c"] == 31.0  # the lowest of the last 15 minutes (no deep idle recorded for campaign 999)
    assert thermal["start_c"] == 62.0 and thermal["end_c"] == 34.0 and thermal["reached"]
    assert 1.4 <= thermal["waited_s"] < 5


def test_thermal_gap_gives_up_at_its_cap_and_says_so(stack_env) -> None:  # noqa: ANN001
    connection = redis_client()
    connection.put([(gpu_key(GPU), {"time": time.time(), "temperature_c": 80.0})], ttl_s=30)
    try:
        state = GpuState(last=(999, 0), gpu_uuid=GPU)
        thermal = pace(
            request(999, 1, thermal_gap={"within_c": 2.0, "max_wait_s": 1.0}), state, connection, threading.Event()
        )["thermal"]
    finally:
        connection.delete(gpu_key(GPU))
    assert not thermal["reached"] and 1.0 <= thermal["waited_s"] < 3 and thermal["end_c"] == 80.0


def test_force_cold_start_loads_the_model_for_every_run(workers, lem, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "cold.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "cold",
                "cycles": 2,
                "force_cold_start": True,
                "cycle_gap_s": 0.5,
                "experiment": {
                    "model": "random:llama-tiny",
                    "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
                    "measurement": {"min_window_s": 0, "warmup_min": 1, "warmup_max": 2},
                },
            }
        )
    )
    result = lem("campaign", "run", str(path))
    assert result.returncode == 0, result.stderr
    campaign_id = max(c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout))
    with session_scope() as s:
        assert s.scalar(select(Campaign.status).where(Campaign.id == campaign_id)) == "done"
        rows = s.execute(
            select(Run.phases, RunMetrics.model_reused, RunMetrics.model_load_s)
            .join(RunMetrics, RunMetrics.run_id == Run.id)
            .where(Run.campaign_id == campaign_id)
            .order_by(Run.position)
        ).all()
    assert [reused for _, reused, _ in rows] == [False, False]  # a fresh engine process each time
    for phases, _, load_s in rows:
        start, end = phases["model_load"]
        assert end - start == pytest.approx(load_s) and load_s > 0
    assert "gap" not in rows[0][0] and rows[1][0]["gap"] == {"kind": "cycle", "seconds": 0.5}
