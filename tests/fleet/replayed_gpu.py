"""A STAND-IN GPU for the fleet tests: the real transformers adapter, on the CPU, naming as its device the GPU that
its host's telemetry replays (``LEM_TEST_REPLAY_GPU_UUID``, a UUID of the recorded H200 trace's replay), so each
run is joined to that host's replayed samples as a run on a real GPU is joined to NVML's. The energy is the
replay's, not the CPU's: what is tested is that it comes from the right host's telemetry, on the right clock.

Importable as ``tests.fleet.replayed_gpu:ReplayedGpuAdapter`` by an engine host whose working directory is the
repository.
"""

from __future__ import annotations

import os

from lem_shared.runtime.adapter import DeviceInfo
from lem_worker_pytorch.adapter import TransformersAdapter

ADAPTER = "tests.fleet.replayed_gpu:ReplayedGpuAdapter"
WORKER = (
    "from lem_shared.runtime.worker import make_worker, worker_argv; from lem_shared.wire.queues import Backend; "
    f"make_worker(Backend.PYTORCH, '{ADAPTER}').worker_main(worker_argv(Backend.PYTORCH))"
)


class ReplayedGpuAdapter(TransformersAdapter):
    def device_info(self) -> DeviceInfo:
        uuid = os.environ["LEM_TEST_REPLAY_GPU_UUID"]
        return DeviceInfo(device="cpu", name=f"stand-in: replayed H200 {uuid}", gpu_uuid=uuid)
