"""The one settings object. Every process reads it from the environment (prefix ``LEM_``) or a ``.env`` file.

The stack (issue 20): ``LEM_BROKER_URL`` and ``LEM_DATABASE_URL`` name the broker and the database, and then
exactly those are used (a failure to reach them is an error, never a fallback). Each one left unset is looked
for on its default local port (Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432); when nothing answers there, its
embedded stand-in is used instead: a broker in a folder (kombu's filesystem transport) and SQLite, both under
``LEM_EMBEDDED_DIR``. ``Settings.embedded`` names the parts so chosen and ``stack_line`` says it in one line.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lem_shared.wire.queues import MAX_GPUS_PER_WORKER


def cuda_indices(device: str) -> tuple[int, ...]:
    """The CUDA indices a ``LEM_DEVICE`` names: ``cuda:N`` one, ``cuda:0,1`` a set; none for auto, cuda, cpu."""
    kind, _, indices = device.partition(":")
    if kind != "cuda" or not indices:
        return ()
    return tuple(int(index) for index in indices.split(","))


def normalised_device(device: str) -> str:
    """``LEM_DEVICE`` as the worker uses it (``cuda:0, 1`` becomes ``cuda:0,1``); ValueError naming the fix."""
    value = device.strip()
    kind, colon, indices = value.partition(":")
    if kind != "cuda" or not colon:
        if "," in value:
            raise ValueError(f"LEM_DEVICE={device!r}: a set of GPUs is written cuda:0,1 (CUDA indices after cuda:)")
        return value
    parts = [part.strip() for part in indices.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"LEM_DEVICE={device!r}: write cuda:N for one GPU or cuda:0,1 for a set of CUDA indices")
    numbers = [int(part) for part in parts]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"LEM_DEVICE={device!r}: names a GPU twice; name each GPU of the set once, e.g. cuda:0,1")
    if len(numbers) > MAX_GPUS_PER_WORKER:
        raise ValueError(
            f"LEM_DEVICE={device!r}: {len(numbers)} GPUs, over the {MAX_GPUS_PER_WORKER} one worker may own; "
            "start a worker per GPU set"
        )
    return "cuda:" + ",".join(str(n) for n in numbers)


DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/1"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/lem"
EMBEDDED_BROKER_URL = "filesystem://"
# How long a default local port gets to accept a connection; loopback refuses at once when nothing listens.
PROBE_TIMEOUT_S = 0.5


def answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def default_embedded_dir() -> str:
    return str(Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share") / "lem")


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def is_embedded_broker(url: str) -> bool:
    return url.startswith("filesystem://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEM_", env_file=".env", extra="ignore")

    # Unset (empty): the server on its default local port when one answers there, else the embedded part (above).
    broker_url: str = ""
    result_backend: str = ""
    database_url: str = ""
    # Where the embedded parts live: the SQLite database (lem.db) and the broker's folder (broker/).
    embedded_dir: str = Field(default_factory=default_embedded_dir)
    _embedded: tuple[str, ...] = PrivateAttr(default=())

    # Redis re-delivers an unacknowledged task after this long; it must exceed the longest run
    # (DESIGN §5). Every process that talks to the broker loads it from here.
    visibility_timeout_s: int = Field(default=6 * 3600, ge=60)
    # A run whose engine has not answered for this long is failed and its engine host restarted.
    run_timeout_s: float = Field(default=3600.0, gt=0)
    # A run whose worker vanished (no heartbeat) is re-queued; after this many attempts it fails.
    max_attempts: int = Field(default=3, ge=1)
    # Worker heartbeats in Redis: written this often, gone this long after a worker dies (then its run is
    # re-queued). The control worker's scheduler pass (dispatch, reclaim, re-send) runs every dispatch_interval_s.
    worker_heartbeat_s: float = Field(default=2.0, gt=0)
    worker_heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    dispatch_interval_s: float = Field(default=2.0, gt=0)
    # A dispatched run no worker has started after this long is sent again (a broker restart can lose it).
    redispatch_after_s: float = Field(default=120.0, gt=0)

    telemetry_interval_s: float = Field(default=0.1, ge=0.01)
    telemetry_flush_s: float = Field(default=1.0, gt=0)
    # "nvml" (default), or "replay:PATH" to replay a recorded NVML trace as a stand-in GPU (tests only).
    telemetry_source: str = "nvml"
    # How long the control worker waits for telemetry to cover a run's window before it gives up.
    energy_wait_s: float = Field(default=15.0, ge=0)

    # Where a worker runs its engine: "auto" takes CUDA when present, else the CPU; "cuda:N" one GPU; "cuda:0,1" a
    # GPU set: the worker takes runs needing up to that many GPUs and its engine sees only those GPUs.
    device: str = "auto"
    # Tests only: a STAND-IN GPU count for a CPU worker (LEM_DEVICE=cpu), which then advertises that many GPUs so
    # runs needing several are routed to it; it still computes on the CPU and records no GPU.
    stand_in_gpus: int | None = Field(default=None, ge=1, le=MAX_GPUS_PER_WORKER)
    # The pytorch worker's CPU threads (torch.set_num_threads, recorded in each run's environment under
    # engine.torch_threads); unset: torch's default, one per core. On a small CPU shared with other work, one
    # thread keeps batch latencies steady, where a thread per core waits on whichever core is busy.
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    # A worker host's operator's choice, never a campaign's: whether experiments may set trust_remote_code (which
    # runs the model repository's own Python in the engine host). Off, such a run fails naming this setting.
    allow_remote_code: bool = False

    # Telemetry (issue 3): the energy counter costs ~4 ms a read and updates every ~100 ms (DESIGN §6), so it
    # is read on its own cadence, one thread per GPU, and stored in rows of its own at their true read time.
    telemetry_energy_interval_s: float = Field(default=0.1, ge=0.01)
    # While the database is away, samples spill here (JSON lines, a subfolder per database), back-filled later.
    telemetry_buffer_dir: str = "~/.cache/lem/telemetry"
    # The disk buffer's bound; past it the oldest files are dropped (and the drop is logged).
    telemetry_buffer_max_mb: float = Field(default=1024.0, gt=0)
    # Per-GPU heartbeat in Redis (the broker): written this often, gone this long after the daemon stops.
    telemetry_heartbeat_s: float = Field(default=1.0, gt=0)
    telemetry_heartbeat_ttl_s: float = Field(default=10.0, gt=0)
    # A GPU whose reads fail (GPU_IS_LOST, ...) is retried this often while the others keep being sampled.
    telemetry_gpu_retry_s: float = Field(default=5.0, gt=0)
    # Where telemetry reads the host's RAPL counters (CPU package and DRAM energy): the powercap sysfs folder. Tests
    # point it at a STAND-IN tree; a folder without RAPL zones means no CPU energy (said in the host heartbeat).
    powercap_root: str = "/sys/class/powercap"

    # Campaign files (issue 15): a file is read only when it is a regular file of at most this many bytes; a grid
    # of more points (counted before expanding: the product of its axes' lengths) or a campaign of more runs
    # (experiments x cycles) is refused with the count. bench/grids/100k.yaml (101,378 points) plans.
    max_campaign_file_bytes: int = Field(default=1024 * 1024, ge=1, le=1024**3)
    max_grid_points: int = Field(default=1_000_000, ge=1, le=10**9)
    max_runs: int = Field(default=100_000, ge=1, le=10**8)

    # lem-flower's login (HTTP basic auth), local and in compose; unset, Flower is unauthenticated on 127.0.0.1.
    flower_user: str = ""
    flower_password: SecretStr = SecretStr("")

    @field_validator("device")
    @classmethod
    def _device_set(cls, value: str) -> str:
        return normalised_device(value)

    @model_validator(mode="after")
    def _resolve_stack(self) -> Settings:
        embedded: list[str] = []
        if not self.broker_url:
            self.broker_url = DEFAULT_BROKER_URL if answers(6379) else EMBEDDED_BROKER_URL
            if is_embedded_broker(self.broker_url):
                embedded.append("broker")
        if not self.database_url:
            self.database_url = (
                DEFAULT_DATABASE_URL
                if answers(5432)
                else f"sqlite:///{Path(self.embedded_dir).expanduser().resolve() / 'lem.db'}"
            )
            if self.database_url.startswith("sqlite"):
                embedded.append("database")
        if not self.result_backend and is_redis(self.broker_url):
            # Nothing reads task results (the database is the record); Flower shows them when they exist.
            self.result_backend = DEFAULT_RESULT_BACKEND if self.broker_url == DEFAULT_BROKER_URL else self.broker_url
        self._embedded = tuple(embedded)
        return self

    @property
    def embedded(self) -> tuple[str, ...]:
        """The parts ("broker", "database") that were left unset and found no server, so run embedded."""
        return self._embedded

    def broker_folder(self) -> Path:
        """The embedded broker's folder: ``filesystem:///PATH`` names it; plain ``filesystem://`` is under
        ``embedded_dir``."""
        path = self.broker_url.removeprefix("filesystem://")
        return Path(path).expanduser() if path else Path(self.embedded_dir).expanduser().resolve() / "broker"

    def stack_line(self) -> str | None:
        """One line saying which parts run embedded and why, or None when both are servers or were named."""
        if not self._embedded:
            return None
        parts = []
        if "database" in self._embedded:
            parts.append(f"results in SQLite at {self.database_url.removeprefix('sqlite:///')}")
        if "broker" in self._embedded:
            parts.append(f"the broker in the folder {self.broker_folder()}")
        unanswered = [
            name
            for name, part in (("Redis on 127.0.0.1:6379", "broker"), ("PostgreSQL on 127.0.0.1:5432", "database"))
            if part in self._embedded
        ]
        unset = [f"LEM_{part.upper()}_URL" for part in ("broker", "database") if part in self._embedded]
        return (
            f"embedded stack: {' and '.join(parts)} ({' and '.join(unset)} unset and nothing answered as "
            f"{' or '.join(unanswered)}; set them to use servers)"
        )

    @model_validator(mode="after")
    def _stand_in_only_on_cpu(self) -> Settings:
        if self.stand_in_gpus is not None and self.device != "cpu":
            raise ValueError(
                f"LEM_STAND_IN_GPUS is a stand-in GPU count for a CPU worker (tests), but LEM_DEVICE={self.device!r}; "
                "unset it, or give a real worker its GPU set as LEM_DEVICE=cuda:0,1"
            )
        return self

    def worker_gpus(self) -> int:
        """How many GPUs this worker owns and advertises: the size of its ``device`` set (1 for auto, cuda, cuda:N,
        and the CPU), or the stand-in count."""
        if self.stand_in_gpus is not None:
            return self.stand_in_gpus
        return max(len(cuda_indices(self.device)), 1)


@lru_cache
def get_settings() -> Settings:
    return Settings()
