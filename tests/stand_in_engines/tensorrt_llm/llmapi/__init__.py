"""STAND-IN, not TensorRT-LLM: imitates ``tensorrt_llm.llmapi``, which exposes the LLM API's config classes
(defined in ``llm_args``)."""

from __future__ import annotations

from tensorrt_llm.llmapi import llm_args
from tensorrt_llm.llmapi.llm_args import (
    AttentionDpConfig,
    CudaGraphConfig,
    DraftTargetDecodingConfig,
    EagleDecodingConfig,
    KvCacheConfig,
    MoeConfig,
    MTPDecodingConfig,
    NGramDecodingConfig,
    RocketSparseAttentionConfig,
    SchedulerConfig,
    TorchCompileConfig,
)

__all__ = [
    "AttentionDpConfig",
    "CudaGraphConfig",
    "DraftTargetDecodingConfig",
    "EagleDecodingConfig",
    "KvCacheConfig",
    "MTPDecodingConfig",
    "MoeConfig",
    "NGramDecodingConfig",
    "RocketSparseAttentionConfig",
    "SchedulerConfig",
    "TorchCompileConfig",
    "llm_args",
]
