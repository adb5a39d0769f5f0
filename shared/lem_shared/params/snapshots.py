"""The committed parameter snapshots, one per (backend, engine version), written by ``lem params discover``.

Plan-time checks use the newest snapshot of each backend: its names are what ``extra`` may set.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

SNAPSHOT_DIR = Path(__file__).resolve().parent / "snapshots"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts 0.10.0 after 0.9.1 and a release after its rc (numbers before text in each part)."""
    parts = re.split(r"[.+-]", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


def snapshot_files(backend: str, folder: Path = SNAPSHOT_DIR) -> list[Path]:
    """The snapshots of ``backend``, oldest engine version first."""
    files = folder.glob(f"{backend}-*.json")
    return sorted(files, key=lambda p: _version_key(p.stem.removeprefix(f"{backend}-")))


@cache
def newest_snapshot(backend: str) -> dict[str, Any] | None:
    """The snapshot of ``backend``'s newest committed engine version, or None when none is committed."""
    files = snapshot_files(backend)
    return json.loads(files[-1].read_text(encoding="utf-8")) if files else None


@cache
def parameter_groups(backend: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{snapshot group: {name: parameter}}`` of the newest snapshot (empty when none is committed)."""
    snapshot = newest_snapshot(backend) or {"parameters": []}
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for parameter in snapshot["parameters"]:
        groups.setdefault(parameter["group"], {})[parameter["name"]] = parameter
    return groups
