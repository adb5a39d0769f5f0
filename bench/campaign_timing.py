"""What the scheduler costs between runs, on the real local stack: dispatch latency and a warm worker's dead time.

Starts its own control worker and pytorch worker (the `lem-control` and `lem-worker-pytorch` entry points) on a
scratch PostgreSQL database and two Redis databases of its own, runs one campaign of a tiny CPU experiment
(random:llama-tiny, a one-batch window, so the runs are short and the scheduler's share is what shows), and
reads the manifest:

- dispatch latency: a run's `started_at` (the worker claimed it) minus its `dispatched_at` (the scheduler marked
  it sent, just before `send_task`): broker, delivery, message decoding and the claim. Target p99 <= 50 ms.
- dead time: on the one warm worker (model kept loaded), the next run's `started_at` minus the previous run's
  `finished_at` (its window recorded), with no configured gap. Target median <= 1 s.

    .venv/bin/python bench/campaign_timing.py --cycles 30
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--experiments", type=int, default=2, help="experiments (batch sizes 1..N)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-dbs", type=int, nargs=2, default=[14, 15])
    parser.add_argument("--admin-database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    import redis
    from sqlalchemy import create_engine, select, text
    from sqlalchemy.engine import make_url

    name = f"lem_bench_{secrets.token_hex(4)}"
    database_url = make_url(args.admin_database_url).set(database=name).render_as_string(hide_password=False)
    broker, results = (f"{args.redis}/{db}" for db in args.redis_dbs)
    env = {
        **os.environ,
        "LEM_DATABASE_URL": database_url,
        "LEM_DEVICE": "cpu",
        "LEM_BROKER_URL": broker,
        "LEM_RESULT_BACKEND": results,
        "LEM_ENERGY_WAIT_S": "0",
        "HF_HUB_OFFLINE": "1",
    }
    os.environ.update(env)
    for db in args.redis_dbs:
        redis.Redis.from_url(f"{args.redis}/{db}").flushdb()

    from lem_shared.db.migrate import upgrade
    from lem_shared.settings import get_settings

    get_settings.cache_clear()
    upgrade(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="lem-bench-"))
    procs = []
    try:
        for service in ("lem-control", "lem-worker-pytorch"):
            log = open(workdir / f"{service}.log", "w")  # noqa: SIM115 - closed with the process
            procs.append(
                (
                    subprocess.Popen(
                        [str(BIN / service)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    ),
                    log,
                )
            )
        campaign = {
            "name": "timing",
            "cycles": args.cycles,
            "structure": "interleaved",
            "experiment": {
                "model": "random:llama-tiny",
                "workload": {"num_prompts": args.experiments, "input_len": 8, "output_len": 4},
                "measurement": {"min_window_s": 0, "warmup_window": 2, "warmup_min": 1, "warmup_max": 2},
            },
            "grid": {"batch_size": list(range(1, args.experiments + 1))},
        }
        path = workdir / "timing.yaml"
        path.write_text(yaml.safe_dump(campaign))
        deadline = time.monotonic() + 120
        while True:  # wait until both workers answer (the CLI refuses a campaign without them)
            check = subprocess.run([str(BIN / "lem"), "doctor", "--json"], env=env, capture_output=True, text=True)
            if '"pytorch' in check.stdout and '"control' in check.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        began = time.monotonic()
        result = subprocess.run(
            [str(BIN / "lem"), "campaign", "run", str(path)], env=env, capture_output=True, text=True, timeout=3600
        )
        elapsed = time.monotonic() - began
        if result.returncode != 0:
            sys.exit(f"campaign failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

        from lem_shared.db.models import Run, RunMetrics

        engine = create_engine(database_url)
        with engine.connect() as conn:
            runs = conn.execute(
                select(
                    Run.started_at,
                    Run.dispatched_at,
                    Run.finished_at,
                    Run.worker,
                    Run.position,
                    RunMetrics.model_reused,
                )
                .join(RunMetrics, RunMetrics.run_id == Run.id)
                .order_by(Run.position)
            ).all()
        engine.dispose()
        latency_ms = [1000 * (r.started_at - r.dispatched_at).total_seconds() for r in runs]
        dead_s = [
            (b.started_at - a.finished_at).total_seconds()
            for a, b in zip(runs, runs[1:], strict=False)
            if a.worker == b.worker and b.model_reused
        ]
        print(
            f"{len(runs)} runs ({args.experiments} experiments x {args.cycles} cycles) in {elapsed:.1f} s, "
            f"one warm CPU worker, local Redis and PostgreSQL"
        )
        print("dispatch latency per run, ms:", " ".join(f"{x:.0f}" for x in latency_ms))
        print(
            f"dispatch latency (dispatched -> claimed): p50 {statistics.median(latency_ms):.1f} ms, "
            f"p99 {percentile(latency_ms, 0.99):.1f} ms, max {max(latency_ms):.1f} ms   (target p99 <= 50 ms)"
        )
        print(
            f"dead time between runs on the warm worker: median {statistics.median(dead_s) * 1000:.0f} ms, "
            f"p90 {percentile(dead_s, 0.9) * 1000:.0f} ms, max {max(dead_s) * 1000:.0f} ms over {len(dead_s)} "
            f"gaps   (target median <= 1 s)"
        )
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        admin = create_engine(args.admin_database_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
