"""The result files of the earlier LLenergyMeasure tool, read into the database (`lem results import DIR`).

The earlier tool (github.com/henrycgbaker/LLenergyMeasure) wrote JSON with a ``schema_version``:

* ``2.x`` / ``3.x``: per-process files ``raw/<experiment_id>/process_<i>.json`` (one per GPU process) and an
  aggregated file ``aggregated/<experiment_id>.json`` (their sum, with the per-process results embedded). 3.x adds
  the environment, the baseline-adjusted energy breakdown, thermal throttling, warm-up and extended metrics.
* ``2.0`` with ``measurement_config_hash`` (the 2026 rewrite): one ``result.json`` per experiment.

Energies are in joules (CodeCarbon's kWh already converted by that tool), times in seconds, latencies in
milliseconds, memory in MiB. Each result becomes one run of one campaign per imported directory; a result is the
aggregated file, or the complete set of an experiment's per-process files when it has no aggregated file. Every
field without a column here is kept, as found, in ``runs.imported["unmapped"]``. Each result is written in its own
transaction; a file that cannot be read whole is reported with the reason and leaves nothing behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload

BACKENDS = {"pytorch": "pytorch", "vllm": "vllm", "tensorrt": "trtllm"}
DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
}
MIB = 1024 * 1024
# Reasons that are no fault of the file: it is already in the database, or another file carries the same result.
ALREADY = "already imported"
COVERED = "covered by"
SIDECAR = "time-series sidecar"
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


class BadFile(Exception):
    """A file (or a set of per-process files) that cannot be imported; the message says why."""


@dataclass
class ImportReport:
    directory: Path
    imported: list[tuple[str, int, int]] = field(default_factory=list)  # (file, campaign_id, runs)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    campaign_id: int | None = None

    @property
    def problems(self) -> list[tuple[str, str]]:
        """Skipped files that were bad (not merely already imported, covered by another file, or a sidecar)."""
        return [(f, r) for f, r in self.skipped if not r.startswith((ALREADY, COVERED, SIDECAR))]

    @property
    def runs(self) -> int:
        return sum(n for _, _, n in self.imported)


# ---------------------------------------------------------------------------------------------- reading fields


def _get(d: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


@overload
def _num(d: Any, path: str, *, required: Literal[True], where: str = "") -> float: ...
@overload
def _num(d: Any, path: str, *, required: bool = False, where: str = "") -> float | None: ...
def _num(d: Any, path: str, *, required: bool = False, where: str = "") -> float | None:
    value = _get(d, path)
    if value is None:
        if required:
            raise BadFile(f"missing required field {where}{path}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadFile(f"field {where}{path} is not a non-negative number: {value!r}")
    return float(value)


@overload
def _int(d: Any, path: str, *, required: Literal[True], where: str = "") -> int: ...
@overload
def _int(d: Any, path: str, *, required: bool = False, where: str = "") -> int | None: ...
def _int(d: Any, path: str, *, required: bool = False, where: str = "") -> int | None:
    value = _num(d, path, required=required, where=where)
    if value is None:
        return None
    if value != int(value):
        raise BadFile(f"field {where}{path} is not a whole number: {value!r}")
    return int(value)


@overload
def _str(d: Any, path: str, *, required: Literal[True], where: str = "") -> str: ...
@overload
def _str(d: Any, path: str, *, required: bool = False, where: str = "") -> str | None: ...
def _str(d: Any, path: str, *, required: bool = False, where: str = "") -> str | None:
    value = _get(d, path)
    if value is None or value == "":
        if required:
            raise BadFile(f"missing required field {where}{path}")
        return None
    if not isinstance(value, str):
        raise BadFile(f"field {where}{path} is not a string: {value!r}")
    return value


def _time(d: Any, path: str, *, where: str = "") -> datetime:
    value = _str(d, path, required=True, where=where)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadFile(f"field {where}{path} is not an ISO 8601 time: {value!r}") from None
    # The earlier tool wrote naive local times; they are kept as found and read as UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _floats(d: Any, path: str, *, where: str = "") -> list[float]:
    value = _get(d, path)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise BadFile(f"field {where}{path} is not a list of numbers")
    return [float(v) for v in value]


def _pop(d: dict[str, Any], path: str) -> None:
    """Remove ``path`` from ``d`` (a copy of the file), dropping parents it leaves empty."""
    keys = path.split(".")
    parents = [d]
    for key in keys[:-1]:
        nxt = parents[-1].get(key)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(keys[-1], None)
    for parent, key in zip(reversed(parents[:-1]), reversed(keys[:-1]), strict=True):
        if parent.get(key) == {}:
            parent.pop(key)


# ------------------------------------------------------------------------------------------- recognising files


@dataclass
class _File:
    rel: str
    raw: bytes
    data: dict[str, Any]
    version: str  # their schema_version, as found
    major: str  # "2" or "3"
    kind: str  # per-process | aggregated | result | multi-cycle | timeseries

    @property
    def fmt(self) -> str:
        return f"v{self.major}-{self.kind}"


# Deeper than this is no result of the earlier tool (theirs nest about 6 levels) and would overflow the recursive
# copy and JSON encoding a result goes through: such a file is skipped like any other bad one.
MAX_NESTING = 64


def _nesting_over(data: Any, limit: int) -> bool:
    """Whether ``data`` nests lists/objects deeper than ``limit`` (iterative: no recursion to overflow)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _classify(rel: str, raw: bytes) -> _File:
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise BadFile("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadFile(f"invalid or truncated JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise BadFile(f"JSON nested too deeply to read (over {MAX_NESTING} levels is no result)") from None
    if _nesting_over(data, MAX_NESTING):
        raise BadFile(f"JSON nested too deeply: over {MAX_NESTING} levels (no result of the earlier tool is)")
    if not isinstance(data, dict):
        raise BadFile(f"unknown format: a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if version is None:
        raise BadFile("unknown format: no schema_version (not an LLenergyMeasure v2/v3 result)")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise BadFile(f"unknown format: schema_version {version!r}")
    major = version.split(".")[0]
    if major not in ("2", "3"):
        raise BadFile(f"unsupported schema_version {version} (v2 and v3 are read)")
    if "samples" in data and "sample_count" in data:
        kind = "timeseries"
    elif "statistics" in data and "cycle_results" in data:
        kind = "multi-cycle"
    elif "measurement_config_hash" in data:
        kind = "result"
    elif "process_index" in data:
        kind = "per-process"
    elif "aggregation" in data or "total_energy_j" in data:
        kind = "aggregated"
    else:
        raise BadFile(f"unknown format: schema_version {version} but neither a per-process nor an aggregated result")
    return _File(rel, raw, data, version, major, kind)


# --------------------------------------------------------------------------------------------- the results


@dataclass
class _Process:
    """The figures of one process (one GPU) of a result."""

    index: int
    start: datetime
    end: datetime
    input_tokens: int
    output_tokens: int
    inference_s: float
    total_energy_j: float
    gpu_energy_j: float | None
    gpu_power_w: float | None
    peak_memory_mb: float | None
    ttft_ms: float | None
    ttft_samples: list[float]
    request_latencies_ms: list[float]
    request_count: int | None
    energy_failed: bool


def _process(d: Any, where: str) -> _Process:
    if not isinstance(d, dict):
        raise BadFile(f"{where or 'file'} is not a JSON object")
    _str(d, "experiment_id", required=True, where=where)
    energy_failed = _get(d, "energy_tracking_failed") is True
    peak = _num(d, "compute_metrics.peak_memory_mb", where=where) or _num(
        d, "extended_metrics.memory.peak_memory_mb", where=where
    )
    measurements = _get(d, "inference_metrics.latency_measurements")
    return _Process(
        index=_int(d, "process_index", required=True, where=where),
        start=_time(d, "timestamps.start", where=where),
        end=_time(d, "timestamps.end", where=where),
        input_tokens=_int(d, "inference_metrics.input_tokens", required=True, where=where),
        output_tokens=_int(d, "inference_metrics.output_tokens", required=True, where=where),
        inference_s=_num(d, "inference_metrics.inference_time_sec", required=True, where=where),
        total_energy_j=_num(d, "energy_metrics.total_energy_j", required=True, where=where),
        gpu_energy_j=_num(d, "energy_metrics.gpu_energy_j", where=where) or None,
        gpu_power_w=_num(d, "energy_metrics.gpu_power_w", where=where) or None,
        peak_memory_mb=peak or None,
        ttft_ms=_num(d, "inference_metrics.time_to_first_token_ms", where=where),
        ttft_samples=_floats(measurements, "ttft_ms", where=f"{where}inference_metrics.latency_measurements."),
        request_latencies_ms=_floats(d, "per_request_latencies_ms", where=where),
        request_count=_int(measurements, "request_count", where=f"{where}inference_metrics.latency_measurements."),
        energy_failed=energy_failed,
    )


@dataclass
class _Result:
    files: list[str]
    fmt: str
    version: str
    key: str
    experiment_id: str
    backend: str
    model: str
    config: dict[str, Any]
    tool_version: str
    start: datetime
    end: datetime
    metrics: dict[str, Any]
    unmapped: Any
    derived: dict[str, str]
    not_recorded: list[str]
    environment: dict[str, Any] | None
    headline: dict[str, Any] | None

    @property
    def label(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{self.files[0]} (+{len(self.files) - 1} sibling files)"


def _experiment_config(doc: dict[str, Any], procs: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """(our backend, model, our experiments.config) of a result: their configuration as found under
    ``llenergymeasure``, with ``model`` and ``backend`` (and ``dtype``, ``batch_size`` where they say) beside it."""
    effective = doc.get("effective_config") or (procs[0].get("effective_config") if procs else None) or {}
    if not isinstance(effective, dict):
        raise BadFile("field effective_config is not an object")
    theirs = _str(doc, "backend") or _str(effective, "backend") or "pytorch"
    if theirs not in BACKENDS:
        raise BadFile(f"unknown backend {theirs!r} (known: {', '.join(BACKENDS)})")
    model = (
        _str(doc, "model_name")
        or (_str(procs[0], "model_name") if procs else None)
        or _str(effective, "model_name")
        or _str(effective, "model")
    )
    if model is None:
        raise BadFile("missing required field model_name (neither in the result nor in effective_config)")
    if not effective:
        name = _str(doc, "config_name") or (_str(procs[0], "config_name") if procs else None)
        effective = {"config_name": name} if name else {}
    config: dict[str, Any] = {"model": model, "backend": BACKENDS[theirs]}
    dtype = DTYPES.get(str(effective.get("fp_precision") or effective.get("precision")))
    if dtype:
        config["dtype"] = dtype
    batch = _get(effective, "batching.batch_size") or _get(effective, f"{theirs}.batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool):
        config["batch_size"] = batch
    config["llenergymeasure"] = effective
    return BACKENDS[theirs], model, config


def _expected_processes(effective: dict[str, Any]) -> int | None:
    for path in ("num_processes", "pytorch.num_processes"):
        value = _get(effective, path)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def _requests(doc: dict[str, Any], processes: list[_Process], effective: dict[str, Any]) -> tuple[int | None, str]:
    samples = _int(doc, "extended_metrics.request_latency.e2e_latency_samples")
    if samples:
        return samples, "extended_metrics.request_latency.e2e_latency_samples"
    latencies = sum(len(p.request_latencies_ms) for p in processes)
    if latencies:
        return latencies, "count of per_request_latencies_ms"
    counts = [p.request_count for p in processes]
    if processes and all(c for c in counts):
        return sum(c for c in counts if c), "sum of latency_measurements.request_count"
    for path in ("num_input_prompts", "n", "dataset.num_samples"):
        value = _get(effective, path)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"effective_config.{path}"
    return None, ""


def _rewrite_energy_source(doc: dict[str, Any]) -> tuple[str, str]:
    """(energy_source, how energy_j was read) of the rewrite's result.json: its energy is the GPU's where the file
    says so (NVML polling, or Zeus's per-GPU figures), else of sources it does not name."""
    notes = _str(doc, "reproducibility_notes") or ""
    if isinstance(doc.get("energy_per_device_j"), list):
        return "imported:gpu", "total_energy_j (GPU: the sum of energy_per_device_j, Zeus)"
    if "nvml" in notes.lower():
        return "imported:gpu", f"total_energy_j (GPU only: reproducibility_notes say {notes.split('.')[0]!r})"
    return "imported:unnamed", "total_energy_j (the file does not say which devices it measured)"


def _headline(doc: dict[str, Any], input_tokens: int, output_tokens: int, duration: float) -> dict[str, Any] | None:
    """The file's own tokens/s (``avg_tokens_per_second``) and what it counts: ours is output tokens per second of
    the window; the earlier tool's counts input + output tokens in some versions and output tokens in others."""
    value = _num(doc, "avg_tokens_per_second")
    if value is None or not duration:
        return None
    counts = "as the file defines it (neither input + output nor output tokens per second of its time)"
    for tokens, what in ((input_tokens + output_tokens, "input + output tokens"), (output_tokens, "output tokens")):
        if math.isclose(value, tokens / duration, rel_tol=0.01):
            counts = what
            break
    return {"field": "avg_tokens_per_second", "value": value, "counts": counts}


def _gpu(env: dict[str, Any]) -> dict[str, Any] | None:
    """One GPU of ours from a v3 ``environment`` (gpu, cuda, thermal) or the rewrite's ``hardware`` block."""
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else {}
    cuda = env.get("cuda") if isinstance(env.get("cuda"), dict) else {}
    thermal = env.get("thermal") if isinstance(env.get("thermal"), dict) else {}
    vram = _num(gpu, "vram_total_mb")
    mig = _get(gpu, "mig_enabled")
    # v3 calls the CUDA version the driver supports `cuda.version`, the rewrite `driver_supported_version`.
    found = {
        "name": _str(gpu, "name"),
        "memory_total_bytes": round(vram * MIB) if vram else None,
        "compute_capability": _str(gpu, "compute_capability"),
        "driver_version": _str(cuda, "driver_version"),
        "cuda_driver_version": _str(cuda, "driver_supported_version") or _str(cuda, "version"),
        "power_limit_w": _num(thermal, "power_limit_w"),
        "power_limit_default_w": _num(thermal, "default_power_limit_w"),
        "mig_mode_current": ("enabled" if mig else "disabled") if isinstance(mig, bool) else None,
        "temperature_c": _num(thermal, "temperature_c"),
    }
    return {k: v for k, v in found.items() if v is not None} or None


def _environment(doc: dict[str, Any], process_docs: list[dict[str, Any]], backend: str) -> dict[str, Any] | None:
    """The earlier tool's environment snapshot in the shape of ours (``kind: imported``; the hash groups imports
    of one host and software as it groups native runs), its own block as found under ``llenergymeasure``; None
    when the file records none."""
    from lem_shared.device.environment import environment_hash, unavailable

    snapshot_v2 = doc.get("environment_snapshot") if isinstance(doc.get("environment_snapshot"), dict) else None
    if isinstance(doc.get("environment"), dict):
        found = [doc["environment"]]
    else:
        found = [p["environment"] for p in process_docs if isinstance(p.get("environment"), dict)]
    if snapshot_v2 is not None:  # the rewrite: {hardware: {gpu, cuda, cpu, ...}, python_version, ...}
        found = [snapshot_v2["hardware"]] if isinstance(snapshot_v2.get("hardware"), dict) else [{}]
    if not found:
        return None
    gpus = [g for g in (_gpu(e) for e in found) if g]
    first = found[0]
    cpu = first.get("cpu") if isinstance(first.get("cpu"), dict) else {}
    container = first.get("container") if isinstance(first.get("container"), dict) else None
    packages: dict[str, str] = {}
    for entry in (snapshot_v2 or {}).get("installed_packages") or []:
        name, sep, version = str(entry).partition("==")
        if sep:
            packages[name] = version
    engine = {"vllm": "vllm", "trtllm": "tensorrt_llm"}.get(backend)
    engine_version = _str(doc, "backend_version")
    if engine and engine_version:
        packages.setdefault(engine, engine_version)
    cuda_runtime = _str(snapshot_v2, "cuda_version") if snapshot_v2 else None
    cuda_source = _str(snapshot_v2, "cuda_version_source") if snapshot_v2 else None
    snapshot: dict[str, Any] = {"kind": "imported", "captured_at": _str(first, "collected_at")}
    snapshot["gpus"] = gpus or unavailable("the earlier tool's file records no GPU")
    if _str(cpu, "model"):
        snapshot["cpu_model"] = cpu["model"]
    if _str(cpu, "governor") and cpu["governor"] != "unknown":
        # One governor for the whole host: theirs does not count CPUs per governor (None: not recorded).
        snapshot["cpu_governors"] = {cpu["governor"]: None}
    if _str(cpu, "platform"):
        snapshot["platform"] = cpu["platform"]
    if container is not None:
        runtime = _str(container, "runtime")
        snapshot["container"] = {
            "container": runtime or ("unknown" if container.get("detected") else "none"),
            "evidence": ["as the earlier tool detected it"],
        }
    if snapshot_v2 and _str(snapshot_v2, "python_version"):
        snapshot["python"] = {"version": snapshot_v2["python_version"]}
    if packages:
        snapshot["packages"] = packages
    if cuda_runtime and cuda_source == "torch":  # the CUDA torch was built with (ours: cuda_runtime)
        snapshot["cuda_runtime"] = cuda_runtime
    elif cuda_runtime:
        snapshot["cuda_version"] = f"{cuda_runtime} (from {cuda_source or 'an unnamed source'})"
    theirs = copy.deepcopy(snapshot_v2 if snapshot_v2 is not None else found[0] if len(found) == 1 else found)
    for block in theirs if isinstance(theirs, list) else [theirs, theirs.get("hardware")]:
        if isinstance(block, dict):  # the time it was read is captured_at, which the hash leaves out
            block.pop("collected_at", None)
    snapshot["llenergymeasure"] = theirs
    snapshot = {k: v for k, v in snapshot.items() if v is not None}
    snapshot["hash"] = environment_hash(snapshot)
    return snapshot


def _build(
    files: list[_File], doc: dict[str, Any], processes: list[_Process], process_docs: list[dict[str, Any]]
) -> _Result:
    """One result from an aggregated file (``doc``, its embedded processes) or from per-process files."""
    first = files[0]
    aggregated = first.kind in ("aggregated", "result")
    derived: dict[str, str] = {}
    not_recorded: list[str] = []
    experiment_id = _str(doc, "experiment_id", required=True)
    backend, model, config = _experiment_config(doc, process_docs)
    effective = config["llenergymeasure"]
    used: list[str] = ["schema_version", "experiment_id", "backend", "effective_config", "model_name"]

    # Tokens and time: summed over the processes (run concurrently, one per GPU); the window is the longest.
    if processes:
        input_tokens = sum(p.input_tokens for p in processes)
        output_tokens = sum(p.output_tokens for p in processes)
        duration = max(p.inference_s for p in processes)
        derived["duration_s"] = "longest inference_metrics.inference_time_sec of the processes"
        start, end = min(p.start for p in processes), max(p.end for p in processes)
    else:  # an aggregated file without its per-process results (the rewrite's single-process result.json)
        total_time = _num(doc, "total_inference_time_sec", required=True)
        n = _int(doc, "aggregation.num_processes") or 1
        duration = total_time / n
        derived["duration_s"] = "total_inference_time_sec" + (f" / {n} processes" if n > 1 else "")
        used.append("total_inference_time_sec")
        flops = _num(doc, "total_flops")
        per_out, per_in = _num(doc, "flops_per_output_token"), _num(doc, "flops_per_input_token")
        energy, per_token = _num(doc, "total_energy_j"), _num(doc, "avg_energy_per_token_j")
        total = _int(doc, "total_tokens")
        if flops and per_out:
            output_tokens = round(flops / per_out)
            derived["output_tokens"] = "total_flops / flops_per_output_token"
        elif energy and per_token and first.kind == "result":
            output_tokens = round(energy / per_token)
            derived["output_tokens"] = "total_energy_j / avg_energy_per_token_j"
        else:
            raise BadFile("partial: the aggregated result has no process_results and no way to tell its output tokens")
        if flops and per_in:
            input_tokens = round(flops / per_in)
            derived["input_tokens"] = "total_flops / flops_per_input_token"
        elif total is not None and total >= output_tokens:
            input_tokens = total - output_tokens
            derived["input_tokens"] = "total_tokens - output tokens"
        else:
            raise BadFile("partial: the aggregated result does not tell its input tokens")
        start, end = _time(doc, "start_time"), _time(doc, "end_time")
    if aggregated:
        start, end = _time(doc, "start_time"), _time(doc, "end_time")
        used += ["start_time", "end_time"]

    # Energy: the GPU share where the file has it (ours is GPU energy); else their total (GPU + CPU + RAM).
    failed = _get(doc, "energy_tracking_failed") is True or any(p.energy_failed for p in processes)
    gpu_parts = [p.gpu_energy_j for p in processes]
    total_energy = (
        _num(doc, "total_energy_j", required=True) if aggregated else sum(p.total_energy_j for p in processes)
    )
    energy_note = None
    if failed:
        energy, source = None, None
        energy_note = "energy tracking failed in the earlier tool (its energy figures were placeholders)"
    elif processes and all(gpu_parts):
        energy, source = sum(g for g in gpu_parts if g), "imported:gpu"
        derived["energy_j"] = "sum of the processes' energy_metrics.gpu_energy_j"
    elif first.kind == "result":  # the rewrite: one energy figure, from the backend its file names
        energy, source, derived["energy_j"] = total_energy, *_rewrite_energy_source(doc)
    else:  # v2/v3 measured with CodeCarbon, whose total is GPU + CPU + RAM
        energy, source = total_energy, "imported:gpu+cpu+ram"
        derived["energy_j"] = (
            "total_energy_j (GPU + CPU + RAM: no GPU share recorded)"
            if aggregated
            else "sum of the processes' energy_metrics.total_energy_j (GPU + CPU + RAM)"
        )
    if energy == 0.0 and not failed:
        energy, source, energy_note = None, None, "the earlier tool recorded 0 J (no energy measured)"

    from lem_shared.measure.stats import percentile

    # Request latencies: their per-request end-to-end latencies (3.x); none in 2.x.
    latencies = [v for p in processes for v in p.request_latencies_ms]
    latency: tuple[float | None, float | None, float | None]
    if latencies:
        latency = (sum(latencies) / len(latencies), percentile(latencies, 50), percentile(latencies, 95))
        derived["latency_*_s"] = "per_request_latencies_ms of the processes (ms -> s)"
    elif _num(doc, "extended_metrics.request_latency.e2e_latency_mean_ms"):
        paths = [f"extended_metrics.request_latency.e2e_latency_{s}_ms" for s in ("mean", "median", "p95")]
        mean = _num(doc, paths[0])
        latency = (mean, _num(doc, paths[1]) or mean, _num(doc, paths[2]) or mean)
        used += paths
    else:
        latency = (None, None, None)
        not_recorded.append("latency_mean_s, latency_p50_s, latency_p95_s (no per-request latencies)")
    latency_s = tuple(v / 1000 if v is not None else None for v in latency)

    ttft_samples = [v for p in processes for v in p.ttft_samples]
    ttft_mean_ms = _num(doc, "latency_stats.ttft_mean_ms")
    if ttft_mean_ms is not None:
        ttft: float | None = ttft_mean_ms / 1000
        used.append("latency_stats.ttft_mean_ms")
    elif ttft_samples:
        ttft = sum(ttft_samples) / len(ttft_samples) / 1000
        derived["ttft_mean_s"] = "mean of the processes' latency_measurements.ttft_ms"
    elif any(p.ttft_ms is not None for p in processes):
        values = [p.ttft_ms for p in processes if p.ttft_ms is not None]
        ttft = sum(values) / len(values) / 1000
        derived["ttft_mean_s"] = "mean of the processes' inference_metrics.time_to_first_token_ms"
    else:
        ttft = None

    requests, requests_from = _requests(doc, processes, effective)
    if requests is None:
        not_recorded.append("requests (0: the file does not say how many prompts)")
    else:
        derived["requests"] = requests_from
    peaks = [p.peak_memory_mb for p in processes if p.peak_memory_mb]
    peak_mb = max(peaks) if peaks else _num(doc, "extended_metrics.memory.peak_memory_mb") or None
    powers = [p.gpu_power_w for p in processes]
    mean_power = sum(w for w in powers if w) if processes and all(powers) else None

    breakdown = "energy_breakdown"
    adjusted = _num(doc, f"{breakdown}.adjusted_j")
    baseline = _num(doc, f"{breakdown}.baseline_power_w")
    method = _str(doc, f"{breakdown}.baseline_method")
    if adjusted is None and _num(doc, "energy_adjusted_j") is not None:  # the rewrite's top-level copies
        adjusted, baseline = _num(doc, "energy_adjusted_j"), _num(doc, "baseline_power_w")
        used += ["energy_adjusted_j", "baseline_power_w"]
    used += [f"{breakdown}.adjusted_j", f"{breakdown}.baseline_power_w", f"{breakdown}.baseline_method"]
    if failed:
        adjusted = None
    warmup = doc.get("warmup_result") if isinstance(doc.get("warmup_result"), dict) else None
    if warmup is None and process_docs and isinstance(process_docs[0].get("warmup_result"), dict):
        warmup = process_docs[0]["warmup_result"]
    if warmup is None:
        not_recorded.append("warm-up (warmup_iterations 0, warmup_converged false)")
    else:
        used += ["warmup_result.iterations_completed", "warmup_result.converged", "warmup_result.final_cv"]
    not_recorded.append("model load (model_load_s 0, model_reused false)")
    max_temp = _num(doc, "thermal_throttle.max_temperature_c")
    used.append("thermal_throttle.max_temperature_c")

    metrics = {
        "requests": requests or 0,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "duration_s": duration,
        "tokens_per_s": output_tokens / duration if duration else 0.0,
        "requests_per_s": (requests or 0) / duration if duration else 0.0,
        "latency_mean_s": latency_s[0],
        "latency_p50_s": latency_s[1],
        "latency_p95_s": latency_s[2],
        "ttft_mean_s": ttft,
        "peak_memory_bytes": round(peak_mb * MIB) if peak_mb else None,
        "peak_memory_kind": "imported",
        "model_load_s": 0.0,
        "model_reused": False,
        "warmup_iterations": _int(warmup, "iterations_completed") or 0,
        "warmup_converged": bool(warmup and warmup.get("converged") is True),
        "warmup_final_cv": _num(warmup, "final_cv"),
        "passes": 1,
        "energy_j": energy,
        "energy_source": source,
        "energy_note": energy_note,
        "energy_adjusted_j": adjusted,
        "baseline_power_w": baseline,
        "baseline_method": f"imported:{method}"[:32] if method else None,
        "mean_power_w": mean_power,
        "max_temperature_c": max_temp,
        "j_per_token": energy / output_tokens if energy is not None and output_tokens else None,
        "j_per_request": energy / requests if energy is not None and requests else None,
        "tokens_per_j": output_tokens / energy if energy else None,
    }

    try:
        environment = _environment(doc, process_docs, backend)
    except BadFile as exc:
        raise BadFile(f"environment: {exc}") from None
    used += ["environment", "environment_snapshot", "avg_tokens_per_second"]
    headline = _headline(doc, input_tokens, output_tokens, duration) if aggregated else None

    unmapped = copy.deepcopy(doc)
    for path in used:
        _pop(unmapped, path)
    if not aggregated:  # per-process files: each file's own leftovers, in process order
        unmapped = {"processes": [_leftovers(d) for d in process_docs]}
    tool = _str(doc, "environment_snapshot.tool_version")
    return _Result(
        files=[f.rel for f in files],
        fmt=first.fmt,
        version=first.version,
        key=_key([f.raw for f in files]),
        experiment_id=experiment_id,
        backend=backend,
        model=model,
        config=config,
        tool_version=f"llenergymeasure {tool}" if tool else f"llenergymeasure v{first.major}",
        start=start,
        end=end,
        metrics=metrics,
        unmapped=unmapped,
        derived=derived,
        not_recorded=not_recorded,
        environment=environment,
        headline=headline,
    )


def _leftovers(d: dict[str, Any]) -> dict[str, Any]:
    rest = copy.deepcopy(d)
    for path in ("schema_version", "backend", "effective_config", "model_name"):
        _pop(rest, path)
    return rest


def _key(contents: list[bytes]) -> str:
    """The run key of an imported result: its files' bytes (so renaming or moving the directory, or importing a
    parent of it, finds the same runs)."""
    digests = sorted(hashlib.sha256(c).hexdigest() for c in contents)
    return hashlib.sha256(("llenergymeasure-import\n" + "\n".join(digests)).encode()).hexdigest()


def _from_aggregated(f: _File) -> _Result:
    procs = f.data.get("process_results") or []
    if not isinstance(procs, list):
        raise BadFile("field process_results is not a list")
    processes = [_process(p, f"process_results[{i}].") for i, p in enumerate(procs)]
    expected = _int(f.data, "aggregation.num_processes")
    if f.kind == "aggregated" and f.data.get("aggregation") is None:
        raise BadFile("missing required field aggregation")
    if processes and expected is not None and expected != len(processes):
        raise BadFile(f"partial: aggregation.num_processes is {expected} but {len(processes)} process_results")
    return _build([f], f.data, processes, procs)


def _from_processes(group: list[_File]) -> _Result:
    """The complete set of one experiment's per-process files, or BadFile naming what is missing."""
    docs = [f.data for f in group]
    processes = [_process(d, "") for d in docs]
    indices = sorted(p.index for p in processes)
    if len(set(indices)) != len(indices):
        raise BadFile(f"partial: process indices repeat ({indices})")
    if len({f.version for f in group}) > 1:
        raise BadFile(f"process files of different schema versions ({sorted({f.version for f in group})})")
    stated = docs[0].get("effective_config")
    effective = stated if isinstance(stated, dict) else {}
    expected = _expected_processes(effective) or indices[-1] + 1
    if indices != list(range(expected)):
        missing = sorted(set(range(expected)) - set(indices))
        raise BadFile(
            f"partial: per-process result without its siblings (has process {indices}, expected 0.."
            f"{expected - 1}; missing {missing})"
        )
    order = sorted(range(len(group)), key=lambda i: processes[i].index)
    group, docs, processes = [group[i] for i in order], [docs[i] for i in order], [processes[i] for i in order]
    doc: dict[str, Any] = {
        k: docs[0][k]
        for k in (
            "schema_version",
            "experiment_id",
            "backend",
            "backend_version",
            "effective_config",
            "model_name",
            "config_name",
        )
        if k in docs[0]
    }
    return _build(group, doc, processes, docs)


def read_results(directory: Path) -> tuple[list[_Result], list[tuple[str, str]]]:
    """Every result in ``directory`` (recursively), and the files that give none, with the reason. Reads only."""
    skipped: list[tuple[str, str]] = []
    files: list[_File] = []
    for path in sorted(p for p in directory.rglob("*.json") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        try:
            f = _classify(rel, path.read_bytes())
        except BadFile as exc:
            skipped.append((rel, str(exc)))
            continue
        except OSError as exc:
            skipped.append((rel, f"cannot read: {exc.strerror or exc}"))
            continue
        if f.kind == "timeseries":
            skipped.append((rel, f"{SIDECAR} (power samples, not a result)"))
        elif f.kind == "multi-cycle":
            skipped.append((rel, "multi-cycle summary, not a single result: import its cycles' aggregated files"))
        else:
            files.append(f)

    results: list[_Result] = []
    aggregated_ids: dict[str, str] = {}
    for f in files:
        if f.kind in ("aggregated", "result"):
            try:
                result = _from_aggregated(f)
            except BadFile as exc:
                skipped.append((f.rel, str(exc)))
                continue
            results.append(result)
            aggregated_ids.setdefault(result.experiment_id, f.rel)
    groups: dict[tuple[str, str], list[_File]] = defaultdict(list)
    for f in files:
        if f.kind == "per-process":
            experiment_id = f.data.get("experiment_id")
            groups[(str(Path(f.rel).parent), str(experiment_id))].append(f)
    for (_, experiment_id), group in groups.items():
        if experiment_id in aggregated_ids:
            skipped += [
                (f.rel, f"{COVERED} {aggregated_ids[experiment_id]} (the same experiment, aggregated)") for f in group
            ]
            continue
        try:
            results.append(_from_processes(group))
        except BadFile as exc:
            skipped += [(f.rel, str(exc)) for f in group]
    return results, skipped


# ---------------------------------------------------------------------------------------------- writing


def _store(result: _Result, directory: Path, campaign_id: int | None) -> tuple[int, str | None]:
    """Write one result in its own transaction: (campaign id, None), or (campaign id, why not) when it is
    already there. The campaign is created with the first result written."""
    from sqlalchemy import func, select

    from lem_shared.db.models import Campaign, CampaignStatus, Environment, Experiment, Run, RunMetrics, RunStatus
    from lem_shared.db.session import session_scope
    from lem_shared.wire.messages import sha256_of

    with session_scope() as s:
        existing = s.scalar(select(Run).where(Run.run_key == result.key))
        if existing is None:
            existing = s.scalar(
                select(Run)
                .where(
                    Run.imported["experiment_id"].as_string() == result.experiment_id,
                    Run.imported["start"].as_string() == result.start.isoformat(),
                )
                .limit(1)
            )
        if existing is not None:
            return existing.campaign_id, f"{ALREADY} (run {existing.id} of campaign {existing.campaign_id})"
        campaign = s.get(Campaign, campaign_id) if campaign_id is not None else None
        if campaign is None:
            spec = {
                "imported": True,
                "tool": "llenergymeasure",
                "directory": str(directory),
                "name": f"imported-{directory.name}"[:100],
            }
            campaign = Campaign(
                name=spec["name"],
                spec=spec,
                spec_hash=sha256_of(spec),
                seed=None,
                status=CampaignStatus.DONE,
                finished_at=datetime.now(UTC),
                source="imported",
                imported_from=str(directory),
            )
            s.add(campaign)
            s.flush()
        config_hash = sha256_of(result.config)
        experiment = s.scalar(
            select(Experiment).where(Experiment.campaign_id == campaign.id, Experiment.config_hash == config_hash)
        )
        if experiment is None:
            index = s.scalar(select(func.count()).select_from(Experiment).where(Experiment.campaign_id == campaign.id))
            experiment = Experiment(
                campaign_id=campaign.id,
                index=index,
                backend=result.backend,
                config=result.config,
                config_hash=config_hash,
            )
            s.add(experiment)
            s.flush()
        cycle = s.scalar(select(func.count()).select_from(Run).where(Run.experiment_id == experiment.id))
        position = s.scalar(select(func.count()).select_from(Run).where(Run.campaign_id == campaign.id))
        run = Run(
            run_key=result.key,
            campaign_id=campaign.id,
            experiment_id=experiment.id,
            cycle=cycle,
            position=position,
            status=RunStatus.DONE,
            attempts=0,
            started_at=result.start,
            finished_at=result.end,
            window_start=result.start,
            window_end=result.end,
            schema_version=f"imported:{result.version}"[:16],
            tool_version=result.tool_version[:32],
            environment_id=Environment.id_for(s, result.environment) if result.environment else None,
            imported={
                "file": result.files[0] if len(result.files) == 1 else result.files,
                "directory": str(directory),
                "format": result.fmt,
                "schema_version": result.version,
                "experiment_id": result.experiment_id,
                "start": result.start.isoformat(),
                "derived": result.derived,
                "not_recorded": result.not_recorded,
                "unmapped": result.unmapped,
                **({"tokens_per_s": result.headline} if result.headline else {}),
            },
        )
        s.add(run)
        s.flush()
        s.add(RunMetrics(run_id=run.id, **result.metrics))
        return campaign.id, None


def _existing_campaign(directory: Path) -> int | None:
    from sqlalchemy import select

    from lem_shared.db.models import Campaign
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        return s.scalar(
            select(Campaign.id)
            .where(Campaign.source == "imported", Campaign.imported_from == str(directory))
            .order_by(Campaign.id)
            .limit(1)
        )


def import_results(directory: Path) -> ImportReport:
    """Import every LLenergyMeasure v2/v3 result under ``directory`` into one campaign (the one an earlier import
    of the same directory made, if any). Bad, partial and already-imported files are in ``skipped``."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    report = ImportReport(directory=directory)
    results, report.skipped = read_results(directory)
    report.campaign_id = _existing_campaign(directory)
    for result in results:
        try:
            campaign_id, why_not = _store(result, directory, report.campaign_id)
        except Exception as exc:  # noqa: BLE001 - the database refused it: rolled back, reported, the rest go on
            report.skipped += [
                (f, f"not written ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") for f in result.files
            ]
            continue
        if why_not:
            report.skipped += [(f, why_not) for f in result.files]
            continue
        report.campaign_id = campaign_id
        report.imported.append((result.label, campaign_id, 1))
    report.skipped.sort()
    return report
