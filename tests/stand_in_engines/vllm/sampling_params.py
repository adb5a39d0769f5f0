"""STAND-IN, not vLLM: imitates ``vllm.sampling_params.RequestOutputKind`` (vLLM 0.26.0's ``sampling_params.py``):
what each ``RequestOutput`` of a request carries, all tokens so far, only the new ones, or only the final one."""

from __future__ import annotations

from enum import Enum


class RequestOutputKind(Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2
