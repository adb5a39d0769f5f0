"""Runs across several GPUs (issue 19): how many GPUs an experiment needs, the GPU-count queue classes, a
worker's GPU set from LEM_DEVICE, what it advertises, how free workers are matched, and the CLI's refusal."""

from __future__ import annotations

import pytest

from lem_planner.campaigns import gpu_shortfall
from lem_shared.config.schema import ExperimentConfig, gpus_needed_of
from lem_shared.dispatch import best_fit
from lem_shared.runtime.adapter import DeviceInfo
from lem_shared.runtime.engine_support import combined_device_info, cuda_visible_devices_for, gpu_set_size
from lem_shared.settings import Settings, cuda_indices
from lem_shared.wire.celery_app import make_celery
from lem_shared.wire.heartbeat import worker_gpus
from lem_shared.wire.queues import MAX_GPUS_PER_WORKER, QueueName, gpus_of_queue, queue_for, worker_queues

HUB = "org/some-model"  # loading options apply to hub or local models only (never loaded here)


def vllm(**engine: int) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"backend": "vllm", "vllm": {"engine": engine}})


def pytorch(**loading: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"model": HUB, "pytorch": {"loading": loading}})


# --- gpus_needed ------------------------------------------------------------------------------------------------


def test_defaults_need_one_gpu_for_every_backend() -> None:
    assert ExperimentConfig().gpus_needed() == 1
    assert ExperimentConfig.model_validate({"backend": "vllm"}).gpus_needed() == 1
    assert ExperimentConfig.model_validate({"backend": "trtllm"}).gpus_needed() == 1


def test_vllm_needs_its_world_size() -> None:
    assert vllm(tensor_parallel_size=2).gpus_needed() == 2
    assert vllm(pipeline_parallel_size=3).gpus_needed() == 3
    # 2 x 2 x 2 (prefill context parallel) x 1 (data parallel) = 8; with 2 replicas, 4 x 2 = 8 too.
    assert vllm(tensor_parallel_size=2, pipeline_parallel_size=2, prefill_context_parallel_size=2).gpus_needed() == 8
    assert vllm(tensor_parallel_size=4, data_parallel_size=2).gpus_needed() == 8


def test_trtllm_needs_tensor_x_pipeline_x_context() -> None:
    engine = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    config = ExperimentConfig.model_validate({"backend": "trtllm", "trtllm": {"engine": engine}})
    assert config.gpus_needed() == 4


def test_pytorch_device_maps() -> None:
    assert pytorch().gpus_needed() == 1
    assert pytorch(device_map="cuda:1").gpus_needed() == 2  # GPU 1 must exist: the set needs 2
    assert pytorch(device_map="cpu").gpus_needed() == 1
    # A module map: the highest GPU named + 1; cpu and disk are not GPUs.
    placed = {"model.embed_tokens": 0, "model.layers.0": 1, "model.layers.1": "cuda:3", "lm_head": "cpu"}
    assert pytorch(device_map=placed).gpus_needed() == 4
    # auto spreads over every GPU the worker has: it needs 1 unless max_memory names the GPUs it may use.
    assert pytorch(device_map="auto").gpus_needed() == 1
    assert pytorch(device_map="auto", max_memory={"0": "40GiB", "1": "40GiB", "cpu": "64GiB"}).gpus_needed() == 2
    assert pytorch(device_map="balanced", max_memory={"cpu": "64GiB"}).gpus_needed() == 1


def test_gpus_needed_of_reads_the_stored_json_as_the_method_does() -> None:
    config = vllm(tensor_parallel_size=2, pipeline_parallel_size=2)
    assert gpus_needed_of(config.model_dump(mode="json")) == config.gpus_needed() == 4
    assert gpus_needed_of({}) == 1  # a config of the defaults stores no sections


# --- queues -----------------------------------------------------------------------------------------------------


def test_queue_classes() -> None:
    assert queue_for("vllm") is QueueName.VLLM and queue_for("vllm", 1).value == "gpu.vllm"
    assert queue_for("vllm", 2).value == "gpu.vllm.gpus2"
    assert queue_for("pytorch", MAX_GPUS_PER_WORKER).value == f"gpu.pytorch.gpus{MAX_GPUS_PER_WORKER}"
    assert [q.value for q in worker_queues("trtllm", 3)] == ["gpu.trtllm.gpus3", "gpu.trtllm.gpus2", "gpu.trtllm"]
    assert worker_queues("pytorch", 1) == [QueueName.PYTORCH]
    assert [gpus_of_queue(q) for q in ("gpu.vllm", "gpu.vllm.gpus2", "gpu.pytorch.gpus8")] == [1, 2, 8]
    # Every backend has every class, declared once in the one list (the Celery apps declare QueueName).
    assert len(QueueName) == 1 + 3 * MAX_GPUS_PER_WORKER
    declared = {q.name for q in make_celery("test-gpu-classes").conf.task_queues}
    assert "gpu.vllm.gpus2" in declared and len(declared) == len(QueueName)


@pytest.mark.parametrize("gpus", [0, -1, MAX_GPUS_PER_WORKER + 1, True, 1.5])
def test_queue_for_refuses_impossible_counts(gpus: object) -> None:
    with pytest.raises(ValueError, match="whole number of GPUs from 1 to 8"):
        queue_for("vllm", gpus)  # type: ignore[arg-type]


def test_the_control_queue_has_no_gpu_class() -> None:
    with pytest.raises(ValueError, match="control queue"):
        gpus_of_queue("control")


# --- a worker's GPU set -----------------------------------------------------------------------------------------


def test_device_sets_parse_and_count() -> None:
    assert Settings(device="cuda:0,1").worker_gpus() == 2
    assert Settings(device=" cuda:3, 1 ,2").device == "cuda:3,1,2"
    assert cuda_indices("cuda:3,1,2") == (3, 1, 2) and cuda_indices("cuda:4") == (4,) and cuda_indices("auto") == ()
    assert [Settings(device=d).worker_gpus() for d in ("auto", "cuda", "cuda:5", "cpu")] == [1, 1, 1, 1]
    assert Settings(device="cpu", stand_in_gpus=2).worker_gpus() == 2


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:0,0", "names a GPU twice"),
        ("cuda:0,x", "cuda:0,1 for a set"),
        ("cuda:", "cuda:0,1 for a set"),
        ("cpu,cuda:1", "a set of GPUs is written cuda:0,1"),
        ("cuda:" + ",".join(str(i) for i in range(9)), "over the 8 one worker may own"),
    ],
)
def test_bad_device_sets_name_the_setting_and_the_fix(device: str, message: str) -> None:
    with pytest.raises(ValueError, match="LEM_DEVICE") as caught:
        Settings(device=device)
    assert message in str(caught.value)


def test_the_stand_in_count_is_for_a_cpu_worker_only() -> None:
    with pytest.raises(ValueError, match="LEM_STAND_IN_GPUS is a stand-in GPU count for a CPU worker"):
        Settings(device="cuda:0", stand_in_gpus=2)
    with pytest.raises(ValueError, match="stand_in_gpus"):
        Settings(device="cpu", stand_in_gpus=0)


def test_an_engine_is_given_exactly_its_set() -> None:
    assert cuda_visible_devices_for("cuda:0,1", None) == "0,1"
    assert cuda_visible_devices_for("cuda:2,0", "4,5,6") == "6,4"  # the set's GPUs among those the host gave
    assert cuda_visible_devices_for("cuda:1", "GPU-a,GPU-b") == "GPU-b"
    assert cuda_visible_devices_for("auto", "0,1") is None
    with pytest.raises(ValueError, match="only 2 GPU"):
        cuda_visible_devices_for("cuda:1,2", "4,5")
    assert [gpu_set_size(d) for d in ("cuda:0,1,2", "cuda:3", "auto")] == [3, 1, 1]


def test_advertised_gpu_counts() -> None:
    assert worker_gpus({"gpus": 4}) == 4
    assert worker_gpus({}) == 1  # a worker of an earlier version owns one GPU
    assert worker_gpus({"gpus": 0}) == worker_gpus({"gpus": "2"}) == worker_gpus({"gpus": True}) == 1


# --- device info: every GPU of a run ---------------------------------------------------------------------------


def test_device_info_lists_every_gpu_with_the_first_as_gpu_uuid() -> None:
    assert DeviceInfo("cuda:0", "H200", "GPU-a").gpu_uuids == ["GPU-a"]
    assert DeviceInfo("cpu", "cpu", None).gpu_uuids == []
    both = combined_device_info([DeviceInfo("cuda:0", "H200", "GPU-a"), DeviceInfo("cuda:1", "H200", "GPU-b")])
    assert (both.device, both.name, both.gpu_uuid, both.gpu_uuids) == (
        "cuda:0,1",
        "2 x H200",
        "GPU-a",
        ["GPU-a", "GPU-b"],
    )
    with pytest.raises(ValueError, match="must be the first of gpu_uuids"):
        DeviceInfo("cuda:0,1", "H200", "GPU-b", ["GPU-a", "GPU-b"])
    with pytest.raises(ValueError, match="names a GPU twice"):
        DeviceInfo("cuda:0,1", "H200", "GPU-a", ["GPU-a", "GPU-a"])


# --- matching runs to free workers -----------------------------------------------------------------------------


def test_best_fit_takes_the_smallest_worker_that_holds_the_run() -> None:
    free = {"big@h": 4, "pair@h": 2, "one@h": 1, "other-pair@h": 2}
    assert best_fit(free, 1) == "one@h"
    assert best_fit(free, 2) == "other-pair@h"  # equal sizes: by name, so a pass is reproducible
    assert best_fit(free, 3) == "big@h"
    assert best_fit(free, 5) is None
    assert best_fit({}, 1) is None


# --- the refusal at `lem campaign run` -------------------------------------------------------------------------


def test_a_run_needing_more_gpus_than_any_live_worker_is_refused_naming_it() -> None:
    experiments = [vllm(), vllm(tensor_parallel_size=2), ExperimentConfig(), vllm(tensor_parallel_size=4)]
    assert gpu_shortfall(experiments, {"vllm": (4, "vllm-big@h"), "pytorch": (1, "pytorch@h")}) is None
    problem = gpu_shortfall(experiments, {"vllm": (1, "vllm@h"), "pytorch": (1, "pytorch@h")})
    assert problem is not None
    assert (
        "experiment 1 (vllm, random:llama-tiny) needs 2 GPUs; the largest live vllm worker, vllm@h, owns 1" in problem
    )
    assert "experiment 3 (vllm, random:llama-tiny) needs 4 GPUs" in problem and "experiment 0" not in problem
    assert "LEM_DEVICE=cuda:0,1,2,3" in problem and "--no-require-workers" in problem
    # A backend with no live worker at all is the "no live worker" check's, not this one's.
    assert gpu_shortfall(experiments, {"pytorch": (1, "pytorch@h")}) is None
