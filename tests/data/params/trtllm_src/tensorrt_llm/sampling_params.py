"""Fixture mimicking tensorrt_llm/sampling_params.py: a dataclass documented by its Args: section."""

# ruff: noqa: UP006, UP007, UP035, UP045  (kept in the real file's Optional/Union/List style)
from dataclasses import dataclass
from typing import List, Optional, Union


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """Sampling parameters for text generation.

    Args:
        end_id (int, optional): The end token id. Defaults to None.
        max_tokens (int): The maximum number of tokens to generate. Defaults to 32.
        temperature (float, optional): Controls the modulation of logits when sampling new tokens.
            It can have values > 0.f. Defaults to None.
        stop (str, List[str], optional): The stop string or strings. Defaults to None.

    Returns:
        nothing
    """

    end_id: Optional[int] = None
    max_tokens: int = 32
    temperature: Optional[float] = None
    stop: Optional[Union[str, List[str]]] = None
