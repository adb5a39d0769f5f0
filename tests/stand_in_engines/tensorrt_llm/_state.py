"""STAND-IN, not TensorRT-LLM: the stand-in's own state (the snapshot it checks against and the calls it got)."""

from __future__ import annotations

import _stand_in
from _stand_in import Call

SNAPSHOT = _stand_in.load_snapshot("trtllm")
CALLS: list[Call] = []
