"""Fixture mimicking tensorrt_llm/builder.py: BuildConfig as a plain dataclass."""

from dataclasses import dataclass, field


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int = None
    max_num_tokens: int = 8192
    plugin_config: dict = field(default_factory=dict)
