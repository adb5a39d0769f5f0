"""One "did you mean" for every unknown name (campaign keys, grid and include keys, backend section fields,
``extra`` parameters): the closest 1-3 known names by difflib, never the whole list."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up to ``n`` known names closest to ``name``, best first."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean batch_size"`` (or ``"did you mean a, b, c"``); ``""`` when nothing is close."""
    close = closest(name, choices)
    return f"did you mean {', '.join(close)}" if close else ""
