"""The one settings object. Every process reads it from the environment (prefix ``LEM_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEM_", env_file=".env", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/lem"

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

    # Where a worker runs its engine: "auto" takes CUDA when present, else the CPU.
    device: str = "auto"
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


@lru_cache
def get_settings() -> Settings:
    return Settings()
