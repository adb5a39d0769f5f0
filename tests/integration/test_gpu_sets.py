"""Runs across several GPUs on the real stack (issue 19): the dispatcher matches runs to free workers by GPU
count (heartbeats of stand-in workers, real Redis queues and PostgreSQL), and with real workers a 2-GPU
experiment is refused at `lem campaign run` while only a 1-GPU worker is live, waits when queued anyway, and runs
once a worker of 2 (STAND-IN) GPUs is up. The vLLM workers here are CPU workers over the stand-in vLLM engine
(``gpu_set_stand_in.py``): ``LEM_DEVICE=cpu`` with ``LEM_STAND_IN_GPUS`` as the GPU count they advertise."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from lem_shared.dispatch import advance
from lem_shared.wire.heartbeat import WORKER_KEY_PREFIX, live_workers, publish_worker_beat
from tests.broker_redis import redis_client
from tests.integration.conftest import Workers
from tests.integration.manifest import campaign_status, runs_of
from tests.integration.telemetry_helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
RUN = {
    "backend": "vllm",
    "model": "random:llama-tiny",
    "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
    "measurement": {"min_window_s": 0.2, "warmup_min": 0, "warmup_window": 2, "warmup_max": 2},
}
TP = "vllm.engine.tensor_parallel_size"
STAND_IN_WORKER = (
    "from lem_shared.runtime.worker import make_worker, worker_argv; from lem_shared.wire.queues import Backend; "
    "make_worker(Backend.VLLM, 'tests.integration.gpu_set_stand_in:StandInGpuSetVllmAdapter')"
    ".worker_main(worker_argv(Backend.VLLM))"
)


def campaign_file(tmp_path: Path, name: str, cycles: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "cycles": cycles, "experiment": RUN, "grid": {TP: [1, 2]}}))
    return path


def latest_campaign(lem) -> int:  # noqa: ANN001
    return max((c["id"] for c in json.loads(lem("campaign", "list", "--json").stdout)), default=0)


def test_the_dispatcher_sends_each_run_to_a_free_worker_with_enough_gpus(lem, workers, celery_app, tmp_path) -> None:  # noqa: ANN001
    connection = redis_client()
    queues = ("gpu.vllm", "gpu.vllm.gpus2")
    names = ["vllm-one@test", "vllm-two@test", "vllm-four@test"]
    queued = lem(
        "campaign", "run", str(campaign_file(tmp_path, "match", cycles=2)), "--no-require-workers", "--no-wait"
    )
    assert queued.returncode == 0, queued.stderr
    campaign_id = latest_campaign(lem)
    try:
        # interleaved: tp 1, tp 2, tp 1, tp 2. Only a 1-GPU worker: the first tp-1 run, nothing for the tp-2 runs.
        publish_worker_beat(connection, names[0], "vllm", None, gpus=1)
        advance(celery_app, connection)
        assert [r.status for r in runs_of(campaign_id)] == ["dispatched", "pending", "pending", "pending"]
        assert [connection.llen(q) for q in queues] == [1, 0]
        # A 2-GPU worker: the queued tp-1 run is the 1-GPU worker's, so the 2-GPU one takes the next tp-2 run.
        publish_worker_beat(connection, names[1], "vllm", None, gpus=2)
        advance(celery_app, connection)
        assert [r.status for r in runs_of(campaign_id)] == ["dispatched", "dispatched", "pending", "pending"]
        assert [connection.llen(q) for q in queues] == [1, 1]
        advance(celery_app, connection)  # both taken: nothing more
        assert [connection.llen(q) for q in queues] == [1, 1]
        # A 4-GPU worker may take a 1-GPU run (the head of the order); it goes to the 1-GPU class queue.
        publish_worker_beat(connection, names[2], "vllm", None, gpus=4)
        advance(celery_app, connection)
        assert [r.status for r in runs_of(campaign_id)] == ["dispatched", "dispatched", "dispatched", "pending"]
        assert [connection.llen(q) for q in queues] == [2, 1]
        sent = json.loads(connection.lindex("gpu.vllm.gpus2", 0) or "{}")
        assert sent["headers"]["id"] == runs_of(campaign_id)[1].run_key
    finally:
        connection.delete(*(WORKER_KEY_PREFIX + n for n in names), *queues)
        assert lem("campaign", "cancel", str(campaign_id)).returncode == 0


def test_a_two_gpu_run_is_refused_waits_and_runs_on_a_two_gpu_worker(
    stack_env: dict[str, str],
    lem,
    workers,
    celery_app,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    env = {**stack_env, "LEM_DEVICE": "cpu", "PYTHONPATH": str(REPO / "tests" / "stand_in_engines")}
    one = Workers({**env, "LEM_STAND_IN_GPUS": "1"}, tmp_path)
    two = Workers({**env, "LEM_STAND_IN_GPUS": "2"}, tmp_path)
    connection = redis_client()
    try:
        one.start("vllm-one", "python", "-c", STAND_IN_WORKER, "--hostname", "vllm-one@%h")
        one.wait_ready(celery_app, ["vllm-one"])
        beat = wait_for(
            lambda: next((b for n, b in live_workers(connection).items() if n.startswith("vllm-one@")), None),
            20,
            "its beat",
        )
        assert (beat["gpus"], beat["device"]) == (1, "cpu")

        before = latest_campaign(lem)
        path = campaign_file(tmp_path, "two-gpus")
        refused = lem("campaign", "run", str(path))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        message = " ".join(refused.stderr.split())
        assert "experiment 1 (vllm, random:llama-tiny) needs 2 GPUs; the largest live vllm worker, vllm-one@" in message
        assert "owns 1" in message and "LEM_DEVICE=cuda:0,1" in message and "Traceback" not in refused.stderr
        assert latest_campaign(lem) == before  # nothing was created

        queued = lem("campaign", "run", str(path), "--no-require-workers", "--no-wait")
        assert queued.returncode == 0, queued.stderr
        campaign_id = latest_campaign(lem)
        try:
            wait_for(lambda: runs_of(campaign_id)[0].status == "done", 60, "the tp-1 run on the 1-GPU worker")
        except AssertionError:
            runs = [(r.status, r.error) for r in runs_of(campaign_id)]
            raise AssertionError(f"{runs}\n{one.log('vllm-one')[-3000:]}") from None
        time.sleep(2 * 2.0)  # two control-loop passes: the tp-2 run is never sent to the 1-GPU worker
        large = runs_of(campaign_id)[1]
        assert large.status == "pending" and large.attempts == 0 and connection.llen("gpu.vllm.gpus2") == 0

        two.start("vllm-two", "python", "-c", STAND_IN_WORKER, "--hostname", "vllm-two@%h")
        two.wait_ready(celery_app, ["vllm-two"])
        wait_for(lambda: campaign_status(campaign_id) != "running", 90, "the campaign to end")
        small, large = runs_of(campaign_id)
        assert (small.status, large.status) == ("done", "done"), (small.error, large.error)
        assert (small.worker or "").startswith("vllm-one@") and (large.worker or "").startswith("vllm-two@")
        assert large.attempts == 1 and large.device == "cpu" and large.gpu_uuids is None  # the CPU records no GPU
        queues = celery_app.control.inspect(timeout=2.0).active_queues() or {}
        consumed = next(sorted(q["name"] for q in qs) for name, qs in queues.items() if name.startswith("vllm-two@"))
        assert consumed == ["gpu.vllm", "gpu.vllm.gpus2"]
    finally:
        one.stop()
        two.stop()
