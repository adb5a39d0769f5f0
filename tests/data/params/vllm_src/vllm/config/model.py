"""Fixture mimicking vllm/config/*.py: config dataclasses whose attribute docstrings document each field."""

from dataclasses import field

from pydantic import Field
from pydantic.dataclasses import dataclass


@dataclass
class ModelConfig:
    model: str = "Qwen/Qwen3-0.6B"
    """Name or path of the Hugging Face model to use."""
    dtype: str = "auto"
    """Data type for model weights and activations."""
    max_model_len: int = None
    """Model context length."""


@dataclass
class CacheConfig:
    gpu_memory_utilization: float = Field(default=0.92, gt=0, le=1)
    """The fraction of GPU memory to be used for the model executor. More text follows."""
    cache_dtype: str = "auto"
    """Data type for kv cache storage."""
    cpu_offload_params: set[str] = field(default_factory=set)
    """Parameter name segments to offload."""
