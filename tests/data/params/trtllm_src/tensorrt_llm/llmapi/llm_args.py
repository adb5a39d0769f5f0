"""Fixture mimicking tensorrt_llm/llmapi/llm_args.py: pydantic models with Field(default=..., description=...)."""

# ruff: noqa: UP006, UP007, UP035, UP045  (kept in the real file's Optional/Union/List style)
from pathlib import Path
from typing import ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class StrictBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KvCacheConfig(StrictBaseModel):
    """Configuration for the KV cache."""

    enable_block_reuse: bool = Field(default=True, description="Controls if KV cache blocks can be reused.")
    max_tokens: Optional[int] = Field(default=None, description="The maximum number of tokens in the KV cache.")
    free_gpu_memory_fraction: Optional[float] = Field(
        default=0.9, description="The fraction of GPU memory that should be allocated for the KV cache. Default is 90%."
    )
    dtype: str = Field(default="auto", description="The data type to use for the KV cache.")


class BaseLlmArgs(StrictBaseModel):
    """Base class for both TorchLlmArgs and TrtLlmArgs."""

    model: Union[str, Path] = Field(description="The path to the model checkpoint or the model name.")
    tensor_parallel_size: int = Field(default=1, description="The tensor parallel size.")
    dtype: str = Field(default="auto", description="The data type to use for the model.")
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig, description="KV cache config.")
    max_batch_size: Optional[int] = Field(default=2048, description="The maximum batch size.")
    _parallel_config: Optional[object] = PrivateAttr(default=None)
    msg: ClassVar[str] = "x"


class TrtLlmArgs(BaseLlmArgs):
    enable_tqdm: bool = Field(default=False, description="Enable tqdm for progress bar.")


class TorchLlmArgs(BaseLlmArgs):
    attn_backend: str = Field(default="TRTLLM", description="Attention backend to use.", status="beta")
    backend: Literal["pytorch"] = "pytorch"
