"""STAND-IN, not TensorRT-LLM: imitates ``tensorrt_llm.inputs.TokensPrompt``, a prompt given as token ids."""

from __future__ import annotations

from typing import TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
