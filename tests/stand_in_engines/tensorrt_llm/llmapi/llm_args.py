"""STAND-IN, not TensorRT-LLM: imitates the nested config classes of ``tensorrt_llm.llmapi.llm_args`` that
``lem_worker_trt.adapter.build_nested`` builds (``KvCacheConfig``, ``CudaGraphConfig``, ``SchedulerConfig``,
``MoeConfig``, ``TorchCompileConfig``, ``AttentionDpConfig``, ``RocketSparseAttentionConfig`` and the speculative
decoding configs through ``DecodingBaseConfig.from_dict``).

``KvCacheConfig`` fields are checked against the snapshot's ``kv_cache_config`` group (TypeError for an unknown
one); the snapshot lists no fields for the other classes, so they accept any keywords. Each construction is
recorded in ``tensorrt_llm.CALLS`` under the class name.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import _stand_in
from _stand_in import Call

from tensorrt_llm._state import CALLS, SNAPSHOT


class _Config:
    snapshot_group: ClassVar[str | None] = None  # the snapshot group naming this class's fields, if any

    def __init__(self, **kwargs: Any) -> None:
        if self.snapshot_group is not None:
            _stand_in.check_kwargs(type(self).__name__, kwargs, SNAPSHOT, (self.snapshot_group,))
        self.fields = dict(kwargs)
        CALLS.append(Call(type(self).__name__, dict(kwargs)))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.fields == self.fields  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stand-in, {self.fields})"


class KvCacheConfig(_Config):
    snapshot_group = "kv_cache_config"


class CudaGraphConfig(_Config):
    pass


class SchedulerConfig(_Config):
    pass


class MoeConfig(_Config):
    pass


class TorchCompileConfig(_Config):
    pass


class AttentionDpConfig(_Config):
    pass


class SparseAttentionConfig(_Config):
    pass


class RocketSparseAttentionConfig(SparseAttentionConfig):
    pass


class DecodingBaseConfig(_Config):
    decoding_type: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodingBaseConfig:
        """The config class named by ``data["decoding_type"]``, built from the rest of ``data``."""
        fields = dict(data)
        kind = fields.pop("decoding_type", None)
        classes = {sub.decoding_type: sub for sub in DecodingBaseConfig.__subclasses__()}
        if kind not in classes:
            raise ValueError(f"unknown decoding_type {kind!r}; one of {', '.join(sorted(classes))}")
        return classes[kind](**fields)


class NGramDecodingConfig(DecodingBaseConfig):
    decoding_type = "NGram"


class MTPDecodingConfig(DecodingBaseConfig):
    decoding_type = "MTP"


class EagleDecodingConfig(DecodingBaseConfig):
    decoding_type = "Eagle"


class DraftTargetDecodingConfig(DecodingBaseConfig):
    decoding_type = "DraftTarget"


class AutoDecodingConfig(DecodingBaseConfig):
    decoding_type = "AUTO"


# The type the snapshot writes for speculative_config.
SpeculativeConfig = DecodingBaseConfig


def as_config(name: str, parameter: dict[str, Any], value: Any) -> Any:
    """``value`` of the ``LLM`` keyword ``name``, checked against the config class its snapshot type names: an
    instance of it, None where the type allows None, or a dict built into it; other values pass unchanged."""
    type_text = str(parameter.get("type") or "")
    names = [
        n
        for n in re.findall(r"[A-Za-z_]\w*", type_text)
        if isinstance(globals().get(n), type) and issubclass(globals()[n], _Config)
    ]
    if not names:
        return value
    cls = globals()[names[0]]
    if value is None:
        if "Optional[" in type_text or parameter.get("default") is None:
            return None
        raise TypeError(f"LLM(): {name} must be a {cls.__name__}, not None")
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value) if cls is DecodingBaseConfig else cls(**value)
    raise TypeError(f"LLM(): {name} must be a {cls.__name__} (or a dict of its fields), got {type(value).__name__}")
