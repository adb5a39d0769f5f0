"""Tokenizers for real-text workloads: the model's own for hub models, a real offline BPE for ``random:*`` presets.

The offline BPE is the SentencePiece model ``tokenizer.model.v1`` that the PyPI package ``mistral-common``
ships as package data: the Mistral 7B v0.1 tokenizer, a Llama-2 style byte-fallback BPE of exactly 32000 ids,
read here with ``sentencepiece`` (no network, no Hugging Face cache). Its 32000 ids fit every ``random:*``
preset (llama-tiny has a vocab of 32000, llama-1b and llama-8b 128256). Alternatives that were weighed: the
GPT-2 BPE (the ``gpt2.tiktoken`` asset of ``openai-whisper``) has 50257 ids, too many for llama-tiny; the
Tekken files of ``mistral-common`` have 131072, too many for every preset.

``mistral-common`` is pinned at 1.9.1: later releases cap numpy below 2.4 on Python <= 3.12. The file is
only read, ``mistral_common`` is never imported beyond its package ``__init__`` (a version string).
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Sequence
from typing import Any, Protocol

RANDOM_PREFIX = "random:"
OFFLINE_MODEL_PACKAGE = "mistral_common"
OFFLINE_MODEL_FILE = "data/tokenizer.model.v1"
OFFLINE_VOCAB_SIZE = 32000


class TextTokenizer(Protocol):
    """What a workload needs from a tokenizer: content ids of a text (no BOS/EOS added) and the id space."""

    name: str
    vocab_size: int
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class OfflineBPETokenizer:
    """The Mistral 7B v0.1 SentencePiece BPE (32000 ids) shipped inside ``mistral-common``."""

    def __init__(self) -> None:
        import sentencepiece

        model_file = importlib.resources.files(OFFLINE_MODEL_PACKAGE).joinpath(OFFLINE_MODEL_FILE)
        with importlib.resources.as_file(model_file) as path:
            if not path.is_file():
                raise ValueError(
                    f"offline tokenizer: {OFFLINE_MODEL_PACKAGE}/{OFFLINE_MODEL_FILE} is missing; "
                    "install the pinned mistral-common (pip install 'mistral-common==1.9.1')"
                )
            self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.name = "mistral-7b-v0.1 sentencepiece BPE (mistral-common tokenizer.model.v1)"
        self.vocab_size: int = int(self._processor.get_piece_size())
        if self.vocab_size != OFFLINE_VOCAB_SIZE:
            raise ValueError(
                f"offline tokenizer: expected {OFFLINE_VOCAB_SIZE} ids in {OFFLINE_MODEL_FILE}, found "
                f"{self.vocab_size}; reinstall mistral-common==1.9.1"
            )
        self.bos_id: int | None = int(self._processor.bos_id())

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"tokenizer.encode: text must be a str, got {type(text).__name__}")
        return [int(token_id) for token_id in self._processor.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._processor.decode([int(token_id) for token_id in ids]))


class HubTokenizer:
    """A Hugging Face tokenizer (hub id or local folder) behind the same small interface."""

    def __init__(self, model: str, hf_tokenizer: Any) -> None:
        self.name = model
        self._tokenizer = hf_tokenizer
        self.vocab_size: int = int(len(hf_tokenizer))
        bos = getattr(hf_tokenizer, "bos_token_id", None)
        self.bos_id: int | None = None if bos is None else int(bos)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"tokenizer.encode: text must be a str, got {type(text).__name__}")
        return [int(token_id) for token_id in self._tokenizer.encode(text, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids)))


@functools.lru_cache(maxsize=1)
def offline_tokenizer() -> OfflineBPETokenizer:
    """The offline 32000-id BPE, loaded once per process."""
    return OfflineBPETokenizer()


def tokenizer_for(model: str, vocab_size: int | None) -> TextTokenizer:
    """The tokenizer that turns a workload's text into ids for ``model``.

    ``random:*`` presets get the offline BPE, provided its ids fit ``vocab_size`` (the preset's); hub ids and
    local folders get their own tokenizer through ``transformers.AutoTokenizer`` (``vocab_size`` is not used:
    a model's own tokenizer matches it by construction).
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model: expected a hub id, a local folder or 'random:NAME', got {model!r}")
    if model.startswith(RANDOM_PREFIX):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(
                f"vocab_size: model {model!r} is a random preset, so its vocab_size (a positive int) is needed "
                f"to check the offline tokenizer fits; got {vocab_size!r}"
            )
        tokenizer = offline_tokenizer()
        if tokenizer.vocab_size > vocab_size:
            raise ValueError(
                f"vocab_size: the offline tokenizer has {tokenizer.vocab_size} ids but model {model!r} has a vocab "
                f"of {vocab_size}; use a preset whose vocab_size is at least {tokenizer.vocab_size}, or random "
                "token ids instead of a text workload"
            )
        return tokenizer
    return _hub_tokenizer(model)


def _hub_tokenizer(model: str) -> HubTokenizer:
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model: no tokenizer could be loaded for {model!r} ({error}); give a hub id that is cached or "
            "reachable, or a local folder holding the tokenizer files"
        ) from error
    return HubTokenizer(model, hf_tokenizer)
