"""Fixture mimicking vllm/engine/arg_utils.py: EngineArgs whose defaults point at config classes."""

from dataclasses import dataclass
from typing import ClassVar

from vllm.config import CacheConfig, ModelConfig
from vllm.config.utils import get_field


@dataclass
class EngineArgs:
    """Arguments for vLLM engine."""

    model: str = ModelConfig.model
    dtype: str = ModelConfig.dtype
    kv_cache_dtype: str = CacheConfig.cache_dtype
    gpu_memory_utilization: float = CacheConfig.gpu_memory_utilization
    cpu_offload_params: set[str] = get_field(CacheConfig, "cpu_offload_params")
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None
    tensor_parallel_size: int = 1
    _api_process_count: int = 1
    registry: ClassVar[dict] = {}

    def create_engine_config(self):
        local: int = 3
        return local
