"""The fleet the multi-host tests run on (``hosts.py``): an infra host (Redis with a password, PostgreSQL), a
control host (``lem-control``, and where ``lem`` runs) and two GPU hosts, each with its own telemetry daemon
replaying the recorded H200 trace as its own GPU (``GPU-replay-h200-0000`` on gpua, ``-0001`` on gpub, at half
the power) and its own pytorch worker measuring on the CPU as that GPU (``replayed_gpu.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from lem_shared.db.models import Campaign, GpuSample, Run, RunMetrics
from lem_shared.db.session import get_engine, session_scope
from lem_shared.settings import get_settings
from lem_shared.wire.celery_app import make_celery
from lem_telemetry.sources import replay_uuids
from tests.fleet.hosts import BIN, Fleet, Host, missing_tools
from tests.fleet.replayed_gpu import WORKER
from tests.integration.conftest import PROCESS_ENV, restore_environment
from tests.integration.telemetry_helpers import wait_for

GPU_HOSTS = ("gpua", "gpub")
GPU_OF = dict(zip(GPU_HOSTS, replay_uuids(len(GPU_HOSTS)), strict=True))
TELEMETRY_INTERVAL_S = 0.1
# Lifetimes short enough that a lost host's run is re-queued within seconds.
SETTINGS = {
    "LEM_WORKER_HEARTBEAT_S": "1",
    "LEM_WORKER_HEARTBEAT_TTL_S": "5",
    "LEM_DISPATCH_INTERVAL_S": "1",
    "LEM_TELEMETRY_INTERVAL_S": str(TELEMETRY_INTERVAL_S),
    "LEM_TELEMETRY_FLUSH_S": "0.5",
    "LEM_ENERGY_WAIT_S": "60",
    "HF_HUB_OFFLINE": "1",
}
RUN = {
    "model": "random:llama-tiny",
    "workload": {"num_prompts": 2, "input_len": 32, "output_len": 48},
    "measurement": {"min_window_s": 4.0, "warmup_min": 1, "warmup_max": 2},
}


@dataclass
class FleetStack:
    fleet: Fleet
    base_env: dict[str, str]
    trace: Path
    report: list[dict]

    @property
    def ctl(self) -> Host:
        return self.fleet.hosts["ctl"]

    def host(self, name: str) -> Host:
        return self.fleet.hosts[name]

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        return {**self.fleet.host_env(host, self.base_env), **extra}

    # --- processes -------------------------------------------------------------------------------------------

    def start_control(self) -> None:
        if not self.ctl.alive("control"):
            self.ctl.spawn("control", [str(BIN / "lem-control")], self.env(self.ctl))

    def start_gpu_host(self, name: str, clock_offset_s: float = 0.0, telemetry_clock_offset_s: float | None = None):  # noqa: ANN201
        """Start the host's telemetry and worker that are not running; ``clock_offset_s``: the whole host's clock
        that far off; ``telemetry_clock_offset_s``: only its telemetry's (default: the host's)."""
        host = self.host(name)
        index = GPU_HOSTS.index(name)
        env = self.env(host, LEM_TEST_REPLAY_GPU_UUID=GPU_OF[name])
        if not host.alive("telemetry"):
            env_t = {**env, "LEM_TELEMETRY_SOURCE": f"replay:{self.trace}?gpus=1&first={index}"}
            offset = clock_offset_s if telemetry_clock_offset_s is None else telemetry_clock_offset_s
            host.spawn("telemetry", [sys.executable, "-m", "lem_telemetry.main"], env_t, clock_offset_s=offset)
        if not host.alive("worker"):
            argv = [sys.executable, "-c", WORKER, "--hostname", f"pytorch@{name}"]
            host.spawn("worker", argv, env, clock_offset_s=clock_offset_s)

    def restart_gpu_host(self, name: str, **clock: float) -> None:
        host = self.host(name)
        host.kill_everything()
        for path in ("broker", "database"):
            host.set_link(path, True)
        self.start_gpu_host(name, **clock)

    def wait_ready(self, names: list[str], timeout: float = 120) -> None:
        """Every named worker answers ping and every GPU host's telemetry has stored a sample lately."""
        app = make_celery("lem-fleet-tests")
        hosts = [self.host(n) for n in names if n in GPU_HOSTS]

        def ready() -> bool:
            for host in [self.ctl, *hosts]:
                for name, process in host.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{host.name} {name} exited:\n{host.log(name)[-3000:]}")
            try:
                replies = {next(iter(r)) for r in app.control.ping(timeout=1.0)}
            except Exception:  # noqa: BLE001 - a restarted broker: the first use of an old connection fails
                return False
            wanted = [f"pytorch@{n}" for n in names if n in GPU_HOSTS] + (["control"] if "ctl" in names else [])
            return all(any(r.startswith(w + "@") or r == w for r in replies) for w in wanted) and all(
                latest_sample(GPU_OF[h.name]) > time.time() - 5 for h in hosts
            )

        wait_for(ready, timeout, f"{', '.join(names)} to be ready", poll=0.5)

    # --- campaigns -------------------------------------------------------------------------------------------

    def lem(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.ctl.run([str(BIN / "lem"), *args], self.env(self.ctl), timeout=timeout)

    def start_campaign(self, name: str, cycles: int, window_s: float = 4.0) -> int:
        spec = {"name": name, "cycles": cycles, "experiment": {**RUN, "measurement": {**RUN["measurement"]}}}
        spec["experiment"]["measurement"]["min_window_s"] = window_s
        path = self.fleet.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        started = self.lem("campaign", "run", str(path), "--no-wait", "--no-require-workers")
        assert started.returncode == 0, started.stderr
        with session_scope() as s:
            return int(s.scalar(select(Campaign.id).where(Campaign.name == name).order_by(Campaign.id.desc())))


def latest_sample(gpu_uuid: str) -> float:
    with session_scope() as s:
        latest = s.scalar(select(func.max(GpuSample.time)).where(GpuSample.gpu_uuid == gpu_uuid))
    return latest.timestamp() if latest else 0.0


def runs_of(campaign_id: int) -> list[Run]:
    with session_scope() as s:
        return list(s.scalars(select(Run).where(Run.campaign_id == campaign_id).order_by(Run.position)))


def campaign_status(campaign_id: int) -> str:
    with session_scope() as s:
        return str(s.scalar(select(Campaign.status).where(Campaign.id == campaign_id)))


def metrics_rows(run_id: int) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(RunMetrics).where(RunMetrics.run_id == run_id)) or 0)


def samples_lost(gpu_uuid: str, start: float, end: float, interval_s: float = TELEMETRY_INTERVAL_S) -> int:
    """Readings missing from the GPU's stored series over [start, end]: every gap longer than a second (a busy
    2-core machine delays single ticks; an outage leaves seconds) counts the readings that should have filled it."""
    with session_scope() as s:
        times = [
            t.timestamp()
            for t in s.scalars(
                select(GpuSample.time)
                .where(
                    GpuSample.gpu_uuid == gpu_uuid,
                    GpuSample.power_w.is_not(None),
                    GpuSample.time >= datetime_utc(start),
                    GpuSample.time <= datetime_utc(end),
                )
                .order_by(GpuSample.time)
            )
        ]
    edges = [start, *times, end]
    return sum(round((b - a) / interval_s) - 1 for a, b in zip(edges, edges[1:], strict=False) if b - a > 1.0)


def datetime_utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


@pytest.fixture(scope="module")
def fleet(h200_trace_dir: Path) -> Iterator[FleetStack]:
    missing = missing_tools()
    if missing:
        pytest.fail("the fleet tests need " + "; ".join(missing))
    fleet = Fleet()
    saved = {k: os.environ.get(k) for k in ("LEM_DATABASE_URL", "LEM_BROKER_URL", "LEM_RESULT_BACKEND")}
    stack = None
    try:
        fleet.start_redis()
        fleet.start_postgres()
        for name in ("ctl", *GPU_HOSTS):
            fleet.add_host(name)
        observer = {
            "LEM_DATABASE_URL": fleet.database_url(fleet.observer_ip),
            "LEM_BROKER_URL": fleet.broker_url(fleet.observer_ip, 0),
            "LEM_RESULT_BACKEND": fleet.broker_url(fleet.observer_ip, 1),
        }
        os.environ.update(observer)
        get_settings.cache_clear()
        base = {**os.environ, **PROCESS_ENV, **SETTINGS}
        stack = FleetStack(fleet, base, h200_trace_dir / "h200_nvml_trace.jsonl", [])
        stack.start_control()
        for name in GPU_HOSTS:
            stack.start_gpu_host(name)
        stack.wait_ready(["ctl", *GPU_HOSTS], timeout=180)
        yield stack
    finally:
        if stack is not None and stack.report:
            report = os.environ.get("LEM_FLEET_REPORT")
            if report:
                with open(report, "a") as out:
                    out.writelines(json.dumps(row) + "\n" for row in stack.report)
        get_engine().dispose()
        keep = os.environ.get("LEM_FLEET_LOGS")  # a folder to keep the hosts' logs in, for a person
        if keep:
            shutil.copytree(fleet.logs, Path(keep) / fleet.tag, dirs_exist_ok=True)
        fleet.remove()
        restore_environment(saved)
