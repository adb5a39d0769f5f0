"""STAND-IN, not vLLM: imitates ``vllm.inputs.TokensPrompt``, a prompt given as token ids (a TypedDict)."""

from __future__ import annotations

from typing import TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
