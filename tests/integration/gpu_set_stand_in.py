"""A STAND-IN GPU set for the GPU-set tests: the real vLLM adapter over the stand-in vLLM engine
(``tests/stand_in_engines``) in a CPU worker started with ``LEM_DEVICE=cpu`` and ``LEM_STAND_IN_GPUS=n``.

It pins no GPU (there is none) and reports the CPU as its device, with no NVML UUID, as ``stand_in_adapters`` does;
what it keeps of a real GPU set is its size: the adapter's own check refuses an experiment needing more GPUs than
the worker owns. Importable as ``tests.integration.gpu_set_stand_in:StandInGpuSetVllmAdapter`` by an engine host
whose working directory is the repository and whose path has ``tests/stand_in_engines`` (the vllm stand-in).
"""

from __future__ import annotations

from lem_shared.runtime.adapter import DeviceInfo
from lem_shared.settings import get_settings
from lem_worker_vllm.adapter import VllmAdapter


class StandInGpuSetVllmAdapter(VllmAdapter):
    def __init__(self, device: str):
        super().__init__("auto")  # "auto" leaves CUDA_VISIBLE_DEVICES alone
        gpus = get_settings().stand_in_gpus or 1
        self.device = "cuda:" + ",".join(str(i) for i in range(gpus))  # the set's size, for the adapter's check

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(device="cpu", name=f"no GPU (stand-in set of {get_settings().stand_in_gpus})", gpu_uuid=None)

    def peak_memory(self) -> tuple[int | None, str]:
        # The adapter's own answer without NVML is longer than run_metrics.peak_memory_kind holds (32 characters).
        return None, "unavailable: stand-in, no GPU"
