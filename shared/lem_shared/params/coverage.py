"""Coverage of each engine's relevant parameters (PARAM-01/02).

``relevance/<backend>.yaml`` is the reviewed list: for each snapshot group, each discovered parameter is
``"yes: <why it moves energy or throughput>"`` or ``"no: <why not>"``. A relevant parameter is *exposed* when it
is a first-class field of the backend section (or set by another experiment field such as ``dtype``), *reachable
through extra* when ``extra`` may set it, and *not exposed* when the tool sets it itself. A parameter a new engine
release adds shows up as *unclassified* until the list is reviewed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from lem_shared.params.engine import EngineSection
from lem_shared.params.pytorch import PytorchOptions
from lem_shared.params.snapshots import snapshot as load_snapshot
from lem_shared.params.trtllm import TrtllmOptions
from lem_shared.params.vllm import VllmOptions

RELEVANCE_DIR = Path(__file__).resolve().parent / "relevance"
SECTIONS: dict[str, type[EngineSection]] = {"pytorch": PytorchOptions, "vllm": VllmOptions, "trtllm": TrtllmOptions}
TARGETS_PCT = {"pytorch": 95.0, "vllm": 90.0, "trtllm": 95.0}


class RelevanceError(Exception):
    """A relevance list that is not ``{group: {name: "yes: reason" | "no: reason"}}``."""


@cache
def relevance(backend: str) -> dict[tuple[str, str], tuple[bool, str]]:
    """``{(snapshot group, name): (relevant, reason)}`` from ``relevance/<backend>.yaml``."""
    path = RELEVANCE_DIR / f"{backend}.yaml"
    if not path.exists():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = {}
    for group, entries in raw.items():
        for name, verdict in (entries or {}).items():
            answer, _, reason = str(verdict).partition(":")
            if answer.strip() not in ("yes", "no") or not reason.strip():
                raise RelevanceError(f"{path.name}: {group}.{name}: must be 'yes: reason' or 'no: reason'")
            out[(group, name)] = (answer.strip() == "yes", reason.strip())
    return out


def _by_snapshot_group(section: type[EngineSection], qualified: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Section ``group.name`` keys spread over the snapshot groups that group draws from."""
    out = {}
    for key, value in qualified.items():
        group, _, name = key.partition(".")
        for snapshot_group in section.snapshot_groups[group]:
            out[(snapshot_group, name)] = value
    return out


def coverage(backend: str, version: str | None = None) -> dict[str, Any]:
    """The coverage report of ``backend``'s snapshot at ``version`` (None: the newest)."""
    section = SECTIONS[backend]
    snapshot = load_snapshot(backend, version)
    if snapshot is None:
        return {
            "engine_version": version,
            "coverage_pct": None,
            "exposed": [],
            "missing": [],
            "error": f"no committed snapshot; run `lem params discover {backend}`",
        }
    fields = {
        f"{group}.{name}": f"{backend}.{group}.{name}"
        for group, names in section.first_class().items()
        for name in names
    }
    first_class = _by_snapshot_group(section, {**fields, **section.set_elsewhere})
    reserved = _by_snapshot_group(section, section.reserved)
    reachable = {s for groups in section.snapshot_groups.values() for s in groups}
    verdicts = relevance(backend)
    exposed, via_extra, not_exposed, unclassified, irrelevant = [], [], [], [], 0
    for parameter in snapshot["parameters"]:
        key = (parameter["group"], parameter["name"])
        label = f"{parameter['group']}.{parameter['name']}"
        if key not in verdicts:
            unclassified.append(label)
        elif not verdicts[key][0]:
            irrelevant += 1
        elif key in first_class:
            exposed.append(label)
        elif key in reserved:
            not_exposed.append({"name": label, "reason": reserved[key]})
        elif parameter["group"] in reachable:
            via_extra.append(label)
        else:
            not_exposed.append({"name": label, "reason": "its group is not passed to any engine call"})
    relevant = len(exposed) + len(via_extra) + len(not_exposed)
    return {
        "engine_version": snapshot["engine_version"],
        "coverage_pct": round(100.0 * len(exposed) / relevant, 1) if relevant else None,
        "target_pct": TARGETS_PCT[backend],
        "exposed": exposed,
        "missing": via_extra + [item["name"] for item in not_exposed],
        "via_extra": via_extra,
        "not_exposed": not_exposed,
        "relevant": relevant,
        "not_relevant": irrelevant,
        "discovered": len(snapshot["parameters"]),
        "unclassified": unclassified,
    }
