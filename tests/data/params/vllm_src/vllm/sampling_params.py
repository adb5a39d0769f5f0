"""Fixture mimicking vllm/sampling_params.py: a msgspec Struct with attribute docstrings."""

from enum import Enum

import msgspec


class RequestOutputKind(Enum):
    CUMULATIVE = 0
    FINAL_ONLY = 2


class SamplingParams(msgspec.Struct, omit_defaults=True, dict=True):
    """Sampling parameters for text generation."""

    n: int = 1
    """Number of outputs to return for the given prompt request."""
    temperature: float = 1.0
    """Controls the randomness of the sampling. Lower values are more deterministic."""
    stop: str | list[str] | None = None
    max_tokens: int | None = 16
    """Maximum number of tokens to generate per output sequence."""
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    _all_stop_token_ids: set[int] = msgspec.field(default_factory=set)
