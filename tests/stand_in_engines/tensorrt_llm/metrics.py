"""STAND-IN, not TensorRT-LLM: imitates ``tensorrt_llm.metrics.MetricNames``, the keys of
``RequestOutput.metrics_dict``."""

from __future__ import annotations

from enum import Enum


class MetricNames(Enum):
    TTFT = "ttft"
    TPOT = "tpot"
    E2E = "e2e"
    REQUEST_QUEUE_TIME = "request_queue_time"
