"""The local disk buffer: samples that could not reach the database wait here as JSON-lines files.

One file per failed flush, named so that names sort in the order they were written (nanosecond time, then
pid and a sequence number). A file is written to ``*.tmp``, flushed to disk and renamed, so a crash never leaves
half a file under a real name. Back-filling reads the files oldest first and deletes each one only after its
rows are committed. The folder is bounded: past ``max_bytes`` the oldest files are dropped, and the drop is
logged with how many samples went. A file that cannot be parsed or inserted is renamed ``*.bad`` and kept
for a person to look at, never retried forever.

Each line is one row as a JSON object: ``{"table": "gpu" | "host" | "host_energy", ...columns, "time": Unix
seconds}`` (``host_energy``: RAPL readings, ``host_energy_samples``).
JSON, never pickle: the files are data, not code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
_GPU_DEFAULTS: dict[str, Any] = dict.fromkeys(("power_instant_w", "power_memory_w", "power_module_w"))
_sequence = itertools.count()


def folder_for(database_url: str) -> str:
    """A subfolder name per database, so samples spilled for one database never back-fill into another."""
    url = make_url(database_url)
    # Who and where, not how: no password, no driver (postgresql+psycopg and postgresql are one database).
    identity = f"{url.get_backend_name()}://{url.username or ''}@{url.host or ''}:{url.port or ''}/{url.database}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", (url.database or "").strip("/"))[-40:]
    return f"{url.get_backend_name()}-{name}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


class DiskBuffer:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped_rows = 0

    def pending(self) -> list[Path]:
        """Files waiting to be back-filled, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*" + SUFFIX))

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.pending())

    def write(
        self, gpu: list[dict[str, Any]], host: list[dict[str, Any]], host_energy: list[dict[str, Any]] | None = None
    ) -> Path:
        """Store rows in a new file (durably); then drop the oldest files while the folder is over its bound.
        Raises OSError when the disk refuses."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}"
        final = self.directory / (name + SUFFIX)
        temporary = self.directory / (name + SUFFIX + ".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for table, rows in (("gpu", gpu), ("host", host), ("host_energy", host_energy or [])):
                for row in rows:
                    out.write(json.dumps({"table": table, **row}, separators=(",", ":")))
                    out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        temporary.rename(final)
        self._enforce_bound(keep=final)
        return final

    def read(self, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(gpu rows, host rows) of one file, for callers that write no RAPL rows; ``read_tables`` gives all."""
        gpu, host, _ = self.read_tables(path)
        return gpu, host

    def read_tables(self, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(gpu, host, host_energy rows) of one file; raises ValueError when it is not a file this buffer wrote."""
        lines = path.read_text(encoding="utf-8").splitlines()
        try:  # one parse for the whole file is several times faster than one per line
            rows = json.loads("[" + ",".join(lines) + "]")
        except ValueError:
            rows = None
        if rows is None or not all(isinstance(row, dict) for row in rows):
            rows = [_parse_line(path, number, line) for number, line in enumerate(lines, 1)]
        gpu: list[dict[str, Any]] = []
        host: list[dict[str, Any]] = []
        host_energy: list[dict[str, Any]] = []
        for number, row in enumerate(rows, 1):
            table = row.pop("table", None)
            if table == "gpu":
                # A file written before a column existed (the instantaneous power fields) back-fills it as NULL.
                gpu.append({**_GPU_DEFAULTS, **row})
            elif table == "host":
                host.append(row)
            elif table == "host_energy":
                host_energy.append(row)
            else:
                raise ValueError(f"{path.name} line {number}: unknown table {table!r}")
            if not isinstance(row.get("time"), (int, float)):
                raise ValueError(f"{path.name} line {number}: no time")
        return gpu, host, host_energy

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def quarantine(self, path: Path, reason: str) -> None:
        bad = path.with_name(path.name + ".bad")
        path.rename(bad)
        log.error("cannot back-fill %s (%s); kept as %s for inspection", path, reason, bad.name)

    def remove_stale_temporaries(self) -> None:
        """Half-written files of a process that died mid-write; their rows were never acknowledged."""
        if self.directory.is_dir():
            for path in self.directory.glob("*" + SUFFIX + ".tmp"):
                log.warning("removing %s, a disk-buffer file whose writer died while writing it", path)
                path.unlink(missing_ok=True)

    def _enforce_bound(self, keep: Path) -> None:
        files = self.pending()
        sizes = {path: path.stat().st_size for path in files}
        total = sum(sizes.values())
        for path in files:
            if total <= self.max_bytes or path == keep:
                break
            rows = count_rows(path)
            total -= sizes[path]
            path.unlink(missing_ok=True)
            self.dropped_rows += rows
            log.warning(
                "disk buffer %s is over its %.0f MB bound: dropped its oldest file %s (%d samples)",
                self.directory, self.max_bytes / 1e6, path.name, rows,
            )  # fmt: skip


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as error:
        raise ValueError(f"{path.name} line {number}: {error}") from error
    if not isinstance(row, dict):
        raise ValueError(f"{path.name} line {number}: not a JSON object")
    return row


def count_rows(path: Path) -> int:
    with path.open("rb") as data:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: data.read(1 << 20), b""))
