"""The real vLLM and TensorRT-LLM adapters, told they run on no GPU: for tests with the stand-in engines.

Not an engine stand-in: ``load``, ``vocab_size``, ``generate``, ``unload``, ``versions``, ``synchronize`` and
``peak_memory`` are the adapters' own. Only ``device_info`` is replaced: the adapters read the device from
``torch.cuda`` (``engine_support.cuda_device_info``), which needs a CUDA GPU; here it names the CPU, with no NVML
UUID, so the runtime takes no idle spans and ``peak_memory`` reports NVML as unavailable. The adapters are built
with ``device="auto"``, the worker default, which leaves ``CUDA_VISIBLE_DEVICES`` alone.

Importable as ``stand_in_adapters:CpuVllmAdapter`` by an engine host spawned while ``tests/stand_in_engines`` is on
``sys.path`` (a spawned process starts with its parent's ``sys.path``).
"""

from __future__ import annotations

from lem_shared.runtime.adapter import DeviceInfo
from lem_worker_trt.adapter import TrtLlmAdapter
from lem_worker_vllm.adapter import VllmAdapter

NO_GPU = DeviceInfo(device="cpu", name="no GPU (stand-in engine)", gpu_uuid=None)


class CpuVllmAdapter(VllmAdapter):
    def device_info(self) -> DeviceInfo:
        return NO_GPU


class CpuTrtLlmAdapter(TrtLlmAdapter):
    def device_info(self) -> DeviceInfo:
        return NO_GPU
