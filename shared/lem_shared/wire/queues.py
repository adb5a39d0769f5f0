"""The single list of queues and backends, and the task names the services send each other."""

from __future__ import annotations

from enum import StrEnum


class Backend(StrEnum):
    PYTORCH = "pytorch"
    VLLM = "vllm"
    TRTLLM = "trtllm"


class QueueName(StrEnum):
    CONTROL = "control"
    PYTORCH = "gpu.pytorch"
    VLLM = "gpu.vllm"
    TRTLLM = "gpu.trtllm"


BACKEND_QUEUES: dict[Backend, QueueName] = {
    Backend.PYTORCH: QueueName.PYTORCH,
    Backend.VLLM: QueueName.VLLM,
    Backend.TRTLLM: QueueName.TRTLLM,
}

# Tasks are sent by name, so no service imports another.
RUN_TASK = "lem.run_experiment"
FINALISE_TASK = "lem.control.finalise_run"


def queue_for(backend: Backend | str) -> QueueName:
    return BACKEND_QUEUES[Backend(backend)]
