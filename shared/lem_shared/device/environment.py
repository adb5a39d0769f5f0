"""What a host is: GPUs (through NVML), CPU, memory, container, Python and engine packages, and a hash of it.

Each fact is read on its own; one that cannot be read is recorded as ``"unavailable: <reason>"``, never raised.
Imports nothing heavy at module level: it runs in the telemetry daemon (pydantic, pynvml, psutil) and in
the workers alike, and pynvml and psutil are optional.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import platform
import re
import socket
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

from lem_shared.wire.messages import sha256_of

PACKAGES = ("torch", "transformers", "vllm", "tensorrt_llm", "nvidia-ml-py")

# Left out of the hash, so runs on the same hardware and software share one environment row:
# - volatile: they change from run to run on an unchanged machine (the time of the snapshot, temperature,
#   performance state, and the current PCIe link, which drops to a low generation and width when idle);
# - identity: which host, GPU unit or device index it was; the run row keeps those (runs.host,
#   runs.gpu_uuid), and a container's host name changes with every restart;
# - the hash itself, so hashing a snapshot that already carries one gives the same value.
VOLATILE_FIELDS = frozenset({"captured_at", "temperature_c", "performance_state", "pcie_generation_current",
                             "pcie_width_current"})  # fmt: skip
IDENTITY_FIELDS = frozenset({"host", "uuid", "index", "gpu_uuid", "device"})
UNHASHED_FIELDS = VOLATILE_FIELDS | IDENTITY_FIELDS | {"hash"}

# Container runtimes named in /proc/1/cgroup (cgroup v1) and /proc/self/mountinfo (the bind-mounted
# /etc/hostname and /etc/hosts come from the runtime's own folders), strongest claim first.
CGROUP_MARKERS = (("kubepods", "kubernetes"), ("libpod", "podman"), ("docker", "docker"),
                  ("containerd", "containerd"), ("lxc", "lxc"))  # fmt: skip
MOUNT_MARKERS = (("/kubelet/pods/", "kubernetes"), ("/overlay-containers/", "podman"),
                 ("/docker/containers/", "docker"))  # fmt: skip
CONTAINER_PRECEDENCE = ("kubernetes", "podman", "docker", "containerd", "lxc")


def unavailable(reason: object) -> str:
    return f"unavailable: {reason}"


def is_unavailable(value: object) -> bool:
    return isinstance(value, str) and value.startswith("unavailable:")


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text or type(error).__name__


# --- GPUs -----------------------------------------------------------------------------------------------


def _read(nvml: ModuleType, function: str, *args: Any, convert: Callable[[Any], Any] = lambda v: v) -> Any:
    """``nvml.<function>(*args)`` passed through ``convert``, or "unavailable: <reason>"."""
    read = getattr(nvml, function, None)
    if read is None:
        return unavailable(f"{function} is not in this nvidia-ml-py")
    try:
        return convert(read(*args))
    except Exception as error:  # NVMLError (NOT_SUPPORTED, NO_PERMISSION, ...) or a value we cannot interpret
        return unavailable(_reason(error))


def _part(value: Any, position: int, convert: Callable[[Any], Any]) -> Any:
    """One item of a multi-value NVML answer (ECC, MIG, limit constraints), or the answer's unavailability."""
    return value if is_unavailable(value) else convert(value[position])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _watts(milliwatts: int) -> float:
    return milliwatts / 1000


def _enabled(state: int) -> str:
    return "enabled" if state else "disabled"


def _cuda_version(encoded: int) -> str:
    """NVML encodes CUDA 13.0 as 13000 and 12.8 as 12080."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def _one_gpu(nvml: ModuleType, handle: Any, driver: str, cuda_driver: str) -> dict[str, Any]:
    from lem_shared.device.nvml import supported_power_fields

    limits = _read(nvml, "nvmlDeviceGetPowerManagementLimitConstraints", handle)
    ecc = _read(nvml, "nvmlDeviceGetEccMode", handle)
    mig = _read(nvml, "nvmlDeviceGetMigMode", handle)
    sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    return {
        "index": _read(nvml, "nvmlDeviceGetIndex", handle, convert=int),
        "uuid": _read(nvml, "nvmlDeviceGetUUID", handle, convert=_text),
        "name": _read(nvml, "nvmlDeviceGetName", handle, convert=_text),
        "memory_total_bytes": _read(nvml, "nvmlDeviceGetMemoryInfo", handle, convert=lambda m: int(m.total)),
        "compute_capability": _read(nvml, "nvmlDeviceGetCudaComputeCapability", handle,
                                    convert=lambda cc: f"{cc[0]}.{cc[1]}"),
        "driver_version": driver,
        "cuda_driver_version": cuda_driver,
        "power_limit_w": _read(nvml, "nvmlDeviceGetPowerManagementLimit", handle, convert=_watts),
        "power_limit_default_w": _read(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", handle, convert=_watts),
        "power_limit_min_w": _part(limits, 0, _watts),
        "power_limit_max_w": _part(limits, 1, _watts),
        "power_limit_enforced_w": _read(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle, convert=_watts),
        "persistence_mode": _read(nvml, "nvmlDeviceGetPersistenceMode", handle, convert=_enabled),
        "ecc_mode_current": _part(ecc, 0, _enabled),
        "ecc_mode_pending": _part(ecc, 1, _enabled),
        "mig_mode_current": _part(mig, 0, _enabled),
        "mig_mode_pending": _part(mig, 1, _enabled),
        "pcie_generation_current": _read(nvml, "nvmlDeviceGetCurrPcieLinkGeneration", handle, convert=int),
        "pcie_generation_max": _read(nvml, "nvmlDeviceGetMaxPcieLinkGeneration", handle, convert=int),
        "pcie_width_current": _read(nvml, "nvmlDeviceGetCurrPcieLinkWidth", handle, convert=int),
        "pcie_width_max": _read(nvml, "nvmlDeviceGetMaxPcieLinkWidth", handle, convert=int),
        "applications_clock_sm_mhz": _read(nvml, "nvmlDeviceGetApplicationsClock", handle, sm, convert=int),
        "applications_clock_mem_mhz": _read(nvml, "nvmlDeviceGetApplicationsClock", handle, mem, convert=int),
        "max_clock_sm_mhz": _read(nvml, "nvmlDeviceGetMaxClockInfo", handle, sm, convert=int),
        "max_clock_mem_mhz": _read(nvml, "nvmlDeviceGetMaxClockInfo", handle, mem, convert=int),
        "temperature_c": _read(nvml, "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU, convert=int),
        "performance_state": _read(nvml, "nvmlDeviceGetPerformanceState", handle, convert=lambda p: f"P{p}"),
        # Power readings beyond power_w (NVML's ~1 s average on Ampere and newer) that this GPU answers.
        "instantaneous_power_fields": list(supported_power_fields(handle)),
    }  # fmt: skip


def _gpus_or_reason(uuid: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Every NVML GPU (or only ``uuid``), or no GPUs and the reason there are none to show."""
    try:
        # Imported here, not through lem_shared.device.nvml: this record reads dozens of descriptive fields, each
        # "unavailable: <reason>" on its own (``_read``), from whichever pynvml is importable now.
        import pynvml as nvml
    except ImportError:
        return [], unavailable("nvidia-ml-py is not installed")
    try:
        nvml.nvmlInit()
    except Exception as error:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return [], unavailable(f"NVML: {_reason(error)}")
    try:
        driver = _read(nvml, "nvmlSystemGetDriverVersion", convert=_text)
        cuda_driver = _read(nvml, "nvmlSystemGetCudaDriverVersion_v2", convert=_cuda_version)
        if uuid is not None:
            handle = _read(nvml, "nvmlDeviceGetHandleByUUID", uuid)
            if is_unavailable(handle):
                return [], unavailable(f"GPU {uuid}: {handle.removeprefix('unavailable: ')}")
            return [_one_gpu(nvml, handle, driver, cuda_driver)], None
        count = _read(nvml, "nvmlDeviceGetCount", convert=int)
        if is_unavailable(count):
            return [], count
        gpus = []
        for index in range(count):
            handle = _read(nvml, "nvmlDeviceGetHandleByIndex", index)
            if is_unavailable(handle):  # a lost GPU is still reported, with what happened to it
                gpus.append({"index": index, "handle": handle})
            else:
                gpus.append(_one_gpu(nvml, handle, driver, cuda_driver))
        return gpus, None
    finally:
        with contextlib.suppress(Exception):  # nothing is left to release when shutting down fails
            nvml.nvmlShutdown()


def gpu_environment(uuid: str | None = None) -> list[dict[str, Any]]:
    """One dict per NVML GPU (only the GPU ``uuid`` when given); ``[]`` when NVML cannot be used."""
    return _gpus_or_reason(uuid)[0]


# --- host -----------------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpu_model() -> str:
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in _read_text("/proc/cpuinfo").splitlines())
        if value
    )
    if "model name" in fields:
        return fields["model name"]
    if "CPU part" in fields:  # Arm cores (Grace, Graviton) name no model, only implementer and part numbers
        return f"Arm implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or unavailable("/proc/cpuinfo names no CPU model")


def _cpu_governors() -> dict[str, int] | str:
    """How many CPUs run each frequency governor, e.g. {"performance": 16}."""
    governors = Counter(
        _read_text(path).strip() or "unreadable"
        for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")
    )
    return dict(governors) if governors else unavailable("no cpufreq scaling_governor in sysfs (a VM or container?)")


def _physical_cores_and_memory() -> tuple[int | str, int | str]:
    try:
        import psutil
    except ImportError:  # the worker images need not have it; memory is also known to the C library
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError) as error:
            return unavailable("psutil is not installed"), unavailable(error)
        return unavailable("psutil is not installed"), memory
    return psutil.cpu_count(logical=False) or unavailable("not reported"), int(psutil.virtual_memory().total)


def _cpu_and_memory() -> dict[str, Any]:
    physical, memory = _physical_cores_and_memory()
    return {
        "cpu_model": _cpu_model(),
        "cpu_physical_cores": physical,
        "cpu_logical_cores": os.cpu_count() or unavailable("not reported"),
        "cpu_usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_governors": _cpu_governors(),
        "memory_total_bytes": memory,
    }


def container_environment() -> dict[str, Any]:
    """Which container runtime this process runs under, if any, and the evidence for it."""
    found: list[tuple[str, str]] = []  # (runtime, evidence)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        found.append(("kubernetes", "KUBERNETES_SERVICE_HOST is set"))
    if os.path.exists("/run/.containerenv"):
        found.append(("podman", "/run/.containerenv exists"))
    if os.path.exists("/.dockerenv"):
        found.append(("docker", "/.dockerenv exists"))
    if runtime := os.environ.get("container"):  # noqa: SIM112 - podman, systemd-nspawn and lxc set it lowercase
        found.append((runtime, f"container={runtime} is set"))
    cgroup = _read_text("/proc/1/cgroup")
    found += [(runtime, f"/proc/1/cgroup mentions {marker}") for marker, runtime in CGROUP_MARKERS if marker in cgroup]
    mountinfo = _read_text("/proc/self/mountinfo")
    found += [(runtime, f"mounts from {marker}") for marker, runtime in MOUNT_MARKERS if marker in mountinfo]
    if any(line.split(" - ")[-1].startswith("overlay ") and line.split()[4] == "/" for line in mountinfo.splitlines()):
        found.append(("unknown", "the root file system is an overlay"))
    named = [runtime for runtime, _ in found if runtime != "unknown"]
    named.sort(key=lambda r: CONTAINER_PRECEDENCE.index(r) if r in CONTAINER_PRECEDENCE else len(CONTAINER_PRECEDENCE))
    container = named[0] if named else "unknown" if found else "none"
    return {"container": container, "evidence": list(dict.fromkeys(evidence for _, evidence in found))}


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions, "not installed" for the missing ones."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cuda_runtime() -> str:
    """The CUDA runtime torch was built with, read without importing torch when it is not loaded yet."""
    if "torch" in sys.modules:
        cuda = sys.modules["torch"].version.cuda
    else:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return unavailable("torch is not installed")
        source = _read_text(os.path.join(spec.submodule_search_locations[0], "version.py"))
        if not source:
            return unavailable("torch/version.py cannot be read")
        # The line is `cuda: Optional[str] = '12.8'`, or `= None` in a CPU-only build.
        found = re.search(r"^cuda\b[^=\n]*=\s*['\"]([^'\"]+)['\"]", source, re.MULTILINE)
        cuda = found.group(1) if found else None
    return str(cuda) if cuda else unavailable("torch is built without CUDA")


def _os_release() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unavailable: os-release names no PRETTY_NAME")
    except OSError as error:
        return unavailable(error)


def host_environment(gpu_uuid: str | None = None, *, gpus: bool = True) -> dict[str, Any]:
    """A snapshot of this host. ``gpus`` lists every NVML GPU, only ``gpu_uuid`` when that is given, and
    none when ``gpus`` is False (a CPU run); it is "unavailable: <reason>" when NVML cannot be used."""
    gpu_list, reason = _gpus_or_reason(gpu_uuid) if gpus else ([], None)
    return {
        "captured_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "os": _os_release(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        **_cpu_and_memory(),
        "container": container_environment(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "packages": package_versions(*PACKAGES),
        "cuda_runtime": _cuda_runtime(),
        "gpus": reason if reason is not None else gpu_list,
    }


def environment_hash(env: dict[str, Any]) -> str:
    """sha256 of the snapshot without its volatile and identity fields (see ``UNHASHED_FIELDS``)."""
    return sha256_of(_without_unhashed(env))


def _without_unhashed(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_unhashed(item) for key, item in value.items() if key not in UNHASHED_FIELDS}
    if isinstance(value, list):
        return [_without_unhashed(item) for item in value]
    return value
