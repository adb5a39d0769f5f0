"""The committed parameter snapshots, one per (backend, engine version), written by ``lem params discover``, and
the choice of the one that plan-time checks use.

A section is checked against the snapshot named in the pydantic validation context (``validation_context``),
the newest committed one when the context names none. The planner chooses it per backend
(``choose_snapshot``): the version the campaign pins (``engine_versions:``), else the version the live workers
of that backend advertise, else the newest committed snapshot. A version without a snapshot of its own is
checked against the nearest older committed one, and the choice says so; one older than every snapshot is
refused (``SnapshotError``), naming the command that makes one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SNAPSHOT_DIR = Path(__file__).resolve().parent / "snapshots"
# The distribution whose version is a backend's engine version (pytorch's is transformers').
ENGINE_PACKAGES = {"pytorch": "transformers", "vllm": "vllm", "trtllm": "tensorrt_llm"}
ENGINE_NAMES = {"pytorch": "transformers", "vllm": "vLLM", "trtllm": "TensorRT-LLM"}
# Key of the pydantic validation context: {backend: committed engine version to check against}.
CONTEXT_KEY = "engine_snapshots"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts 0.10.0 after 0.9.1 and a release after its rc (numbers before text in each part)."""
    parts = re.split(r"[.+-]", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


def snapshot_files(backend: str, folder: Path = SNAPSHOT_DIR) -> list[Path]:
    """The snapshots of ``backend``, oldest engine version first."""
    files = folder.glob(f"{backend}-*.json")
    return sorted(files, key=lambda p: _version_key(p.stem.removeprefix(f"{backend}-")))


@cache
def committed_versions(backend: str) -> tuple[str, ...]:
    """The engine versions of ``backend`` with a committed snapshot, oldest first."""
    return tuple(p.stem.removeprefix(f"{backend}-") for p in snapshot_files(backend))


@cache
def snapshot(backend: str, version: str | None = None) -> dict[str, Any] | None:
    """The committed snapshot of ``backend`` at ``version`` (None: the newest), or None when there is none."""
    versions = committed_versions(backend)
    if version is None:
        version = versions[-1] if versions else None
    if version not in versions:
        return None
    return json.loads((SNAPSHOT_DIR / f"{backend}-{version}.json").read_text(encoding="utf-8"))


def newest_snapshot(backend: str) -> dict[str, Any] | None:
    """The snapshot of ``backend``'s newest committed engine version, or None when none is committed."""
    return snapshot(backend)


@cache
def parameter_groups(backend: str, version: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{snapshot group: {name: parameter}}`` of the snapshot at ``version`` (None: the newest; empty when there
    is none)."""
    found = snapshot(backend, version) or {"parameters": []}
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for parameter in found["parameters"]:
        groups.setdefault(parameter["group"], {})[parameter["name"]] = parameter
    return groups


def nearest_version(backend: str, version: str) -> str | None:
    """``version`` when a snapshot of it is committed, else the newest committed one older than it, else None."""
    older = [v for v in committed_versions(backend) if _version_key(v) <= _version_key(version)]
    return older[-1] if older else None


def validation_context(versions: Mapping[str, str | None]) -> dict[str, Any]:
    """The pydantic validation context that checks each backend's section against the committed snapshot of
    ``versions[backend]`` (a backend left out, or None: the newest)."""
    return {CONTEXT_KEY: {backend: version for backend, version in versions.items() if version is not None}}


def context_version(context: Any, backend: str) -> str | None:
    """The snapshot version a validation context names for ``backend`` (None: the newest)."""
    return (context or {}).get(CONTEXT_KEY, {}).get(backend)


def installed_context(packages: Mapping[str, str]) -> dict[str, Any]:
    """The validation context where an experiment runs: each backend checked against the nearest committed
    snapshot at or below its installed engine version (``packages``: {distribution: version}, as an adapter's
    ``versions()`` or an environment snapshot gives them), the newest where there is none."""
    versions = {}
    for backend, package in ENGINE_PACKAGES.items():
        if package in packages:
            versions[backend] = nearest_version(backend, _release(packages[package]))
    return validation_context(versions)


def _release(version: str) -> str:
    """The release a local build belongs to: ``2.13.0+cpu`` is 2.13.0."""
    return version.partition("+")[0]


class SnapshotError(ValueError):
    """No committed snapshot can check a backend: the version in use is older than every snapshot, or the live
    workers run different versions."""


@dataclass(frozen=True)
class SnapshotChoice:
    """The snapshot a backend's sections are checked against (``version``: its engine version, None when none is
    committed) and why, as the planner prints it; ``warning``: live workers that run another version."""

    backend: str
    version: str | None
    note: str
    warning: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.version}" if self.version else f"no {self.backend} snapshot"


def discover_hint(backend: str, version: str) -> str:
    """The command that makes the snapshot of ``backend`` at ``version``."""
    if backend == "pytorch":
        return f"`lem params discover pytorch` with transformers {version} installed"
    wheel = ENGINE_PACKAGES[backend]
    return f"`lem params discover {backend} --source {wheel}-{version}-*.whl`"


def choose_snapshot(backend: str, pinned: str | None, advertised: Mapping[str, str]) -> SnapshotChoice:
    """The snapshot ``backend`` is checked against: ``pinned`` (the campaign's ``engine_versions``), else the one
    version every live worker advertises (``advertised``: {worker: engine version}), else the newest committed.
    Raises SnapshotError when the live workers disagree (unless pinned) or the version is older than every
    committed snapshot."""
    engine = ENGINE_NAMES[backend]
    running = ", ".join(f"{worker}: {version}" for worker, version in sorted(advertised.items()))
    if pinned is not None:
        wanted, why = pinned, f"pinned by engine_versions.{backend}: {pinned}"
        others = {v for v in advertised.values() if v != pinned}
        warning = (
            f"{backend}: engine_versions pins {engine} {pinned}, but live workers run {running}" if others else None
        )
    elif advertised:
        live = set(advertised.values())
        if len(live) > 1:
            raise SnapshotError(
                f"{backend}: live workers run different {engine} versions ({running}); pin the one "
                f"to check against with engine_versions: {{{backend}: VERSION}}, or stop the others"
            )
        wanted = live.pop()
        why, warning = f"live {backend} workers run {engine} {wanted}", None
    else:
        versions = committed_versions(backend)
        version = versions[-1] if versions else None
        note = (
            f"{backend}: checked against snapshot {backend}-{version} (no live {backend} worker)"
            if version
            else f"{backend}: no committed snapshot (no live {backend} worker); extra cannot be checked"
        )
        return SnapshotChoice(backend, version, note)
    release = _release(wanted)
    version = nearest_version(backend, release)
    if version is None:
        committed = ", ".join(committed_versions(backend)) or "none"
        raise SnapshotError(
            f"{backend}: no committed snapshot of {engine} {wanted} or older ({why}; committed: "
            f"{committed}); make one with {discover_hint(backend, wanted)}"
        )
    note = f"{backend}: checked against snapshot {backend}-{version} ({why})"
    if version != release:
        note += f"; no snapshot of {release}: the nearest older (make one with {discover_hint(backend, wanted)})"
    return SnapshotChoice(backend, version, note, warning)
