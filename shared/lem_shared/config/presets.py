"""Random-initialised model presets: ``random:NAME`` builds a model of that shape from a config, no download.

A random-initialised model does the same arithmetic as a trained one of the same shape, so throughput and
energy figures are honest; only the text it produces is meaningless (the output length is forced).
The shapes follow the published configs of the models named in each comment.
"""

from __future__ import annotations

RANDOM_PREFIX = "random:"

LLAMA_PRESETS: dict[str, dict[str, int | float]] = {
    # Small enough for a 2-core CPU: a whole default campaign runs in well under a minute.
    "llama-tiny": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    # Llama 3.2 1B shape (1.24 B parameters, tied embeddings).
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=1,
    ),
    # Llama 3.1 8B shape.
    "llama-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
}


def random_preset(model: str) -> dict[str, int | float] | None:
    """The config of a ``random:NAME`` model, or None when ``model`` is a hub id or a local folder."""
    if not model.startswith(RANDOM_PREFIX):
        return None
    return LLAMA_PRESETS[model.removeprefix(RANDOM_PREFIX)]
