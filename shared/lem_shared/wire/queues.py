"""The single list of queues and backends, and the task names the services send each other.

Each backend has a queue per GPU-count class: ``gpu.<backend>`` for runs on one GPU (or the CPU) and
``gpu.<backend>.gpus<k>`` for runs that need k GPUs (2 to ``MAX_GPUS_PER_WORKER``). A worker of n GPUs consumes
its backend's classes n down to 1 (``worker_queues``), so it can take any run needing at most n GPUs, and a worker
of fewer GPUs never sees a run it cannot hold.
"""

from __future__ import annotations

from enum import StrEnum

# The largest GPU set one worker may own (one host's NVLink domain: 8 GPUs on an HGX board).
MAX_GPUS_PER_WORKER = 8


class Backend(StrEnum):
    PYTORCH = "pytorch"
    VLLM = "vllm"
    TRTLLM = "trtllm"


class QueueName(StrEnum):
    CONTROL = "control"
    PYTORCH = "gpu.pytorch"
    VLLM = "gpu.vllm"
    TRTLLM = "gpu.trtllm"
    # Runs needing several GPUs (see the module docstring); written out so this stays the one list of queues.
    PYTORCH_GPUS2 = "gpu.pytorch.gpus2"
    PYTORCH_GPUS3 = "gpu.pytorch.gpus3"
    PYTORCH_GPUS4 = "gpu.pytorch.gpus4"
    PYTORCH_GPUS5 = "gpu.pytorch.gpus5"
    PYTORCH_GPUS6 = "gpu.pytorch.gpus6"
    PYTORCH_GPUS7 = "gpu.pytorch.gpus7"
    PYTORCH_GPUS8 = "gpu.pytorch.gpus8"
    VLLM_GPUS2 = "gpu.vllm.gpus2"
    VLLM_GPUS3 = "gpu.vllm.gpus3"
    VLLM_GPUS4 = "gpu.vllm.gpus4"
    VLLM_GPUS5 = "gpu.vllm.gpus5"
    VLLM_GPUS6 = "gpu.vllm.gpus6"
    VLLM_GPUS7 = "gpu.vllm.gpus7"
    VLLM_GPUS8 = "gpu.vllm.gpus8"
    TRTLLM_GPUS2 = "gpu.trtllm.gpus2"
    TRTLLM_GPUS3 = "gpu.trtllm.gpus3"
    TRTLLM_GPUS4 = "gpu.trtllm.gpus4"
    TRTLLM_GPUS5 = "gpu.trtllm.gpus5"
    TRTLLM_GPUS6 = "gpu.trtllm.gpus6"
    TRTLLM_GPUS7 = "gpu.trtllm.gpus7"
    TRTLLM_GPUS8 = "gpu.trtllm.gpus8"


BACKEND_QUEUES: dict[Backend, QueueName] = {
    Backend.PYTORCH: QueueName.PYTORCH,
    Backend.VLLM: QueueName.VLLM,
    Backend.TRTLLM: QueueName.TRTLLM,
}

# Tasks are sent by name, so no service imports another.
RUN_TASK = "lem.run_experiment"
FINALISE_TASK = "lem.control.finalise_run"


def _check_gpus(gpus: int, what: str) -> None:
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS_PER_WORKER:
        raise ValueError(f"{what}: must be a whole number of GPUs from 1 to {MAX_GPUS_PER_WORKER}; got {gpus!r}")


def queue_for(backend: Backend | str, gpus: int = 1) -> QueueName:
    """The queue of ``backend``'s runs that need ``gpus`` GPUs (1: the backend's own queue)."""
    _check_gpus(gpus, "gpus")
    base = BACKEND_QUEUES[Backend(backend)]
    return base if gpus == 1 else QueueName(f"{base.value}.gpus{gpus}")


def worker_queues(backend: Backend | str, gpus: int) -> list[QueueName]:
    """What a worker of ``gpus`` GPUs consumes: its backend's classes from ``gpus`` down to 1, largest first (the
    worker reads them in this order, so a run that needs its whole set is not passed over for a smaller one)."""
    _check_gpus(gpus, "a worker's GPU count")
    return [queue_for(backend, k) for k in range(gpus, 0, -1)]


def gpus_of_queue(queue: QueueName | str) -> int:
    """The GPU count of a backend queue's class (1 for ``gpu.<backend>``); ValueError for the control queue."""
    name = QueueName(queue).value
    if name == QueueName.CONTROL.value:
        raise ValueError("the control queue carries no runs, so it has no GPU class")
    _, _, tail = name.partition(".gpus")
    return int(tail) if tail else 1
