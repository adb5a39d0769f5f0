"""Environment snapshots: this host as it is, GPU fields through a fake pynvml standing in for a GPU, the hash."""

from __future__ import annotations

import copy
import platform
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import pynvml
import pytest

# Imported before any test swaps in the fake pynvml: the wrapper binds the real module's constants at import.
import lem_shared.device.nvml  # noqa: F401
from lem_shared.device.environment import (
    container_environment,
    environment_hash,
    gpu_environment,
    host_environment,
    is_unavailable,
)
from lem_shared.runtime.adapter import DeviceInfo
from lem_shared.runtime.environment import environment_snapshot

# The GPU recorded in tests/data/h200/h200_nvidia_smi_q.txt, and a second one like it.
H200_UUIDS = ("GPU-5fec25fb-4a50-92b0-5008-05ca4f0c47e2", "GPU-00000000-0000-0000-0000-000000000001")


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def fake_pynvml_h200s(
    not_supported: frozenset[str] = frozenset(), missing: frozenset[str] = frozenset(), init_error: int | None = None
) -> ModuleType:
    """A stand-in for nvidia-ml-py on a box without a GPU: two H200s as nvidia-smi reported the recorded one.

    It raises the real pynvml error classes; the functions in ``not_supported`` raise NOT_SUPPORTED, those in
    ``missing`` do not exist (an older nvidia-ml-py), and ``init_error`` makes nvmlInit fail with that code.
    """
    fake = ModuleType("pynvml")
    for name in ("NVMLError", "NVMLError_NotSupported", "NVMLError_NotFound",
                 "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_TEMPERATURE_GPU"):  # fmt: skip
        setattr(fake, name, getattr(pynvml, name))
    sm, mem = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM

    def init() -> None:
        if init_error is not None:
            raise pynvml.NVMLError(init_error)

    def by_uuid(uuid: str) -> int:
        if uuid not in H200_UUIDS:
            raise pynvml.NVMLError_NotFound()
        return H200_UUIDS.index(uuid)

    functions: dict[str, Callable[..., Any]] = {
        "nvmlInit": init,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: "580.159.04",
        "nvmlSystemGetCudaDriverVersion_v2": lambda: 13000,
        "nvmlDeviceGetCount": lambda: len(H200_UUIDS),
        "nvmlDeviceGetHandleByIndex": lambda index: index,
        "nvmlDeviceGetHandleByUUID": by_uuid,
        "nvmlDeviceGetIndex": lambda handle: handle,
        "nvmlDeviceGetUUID": lambda handle: H200_UUIDS[handle],
        "nvmlDeviceGetName": lambda handle: "NVIDIA H200",
        "nvmlDeviceGetMemoryInfo": lambda handle: SimpleNamespace(total=143771 * 2**20, used=0, free=143771 * 2**20),
        "nvmlDeviceGetCudaComputeCapability": lambda handle: (9, 0),
        "nvmlDeviceGetPowerManagementLimit": lambda handle: 700000,
        "nvmlDeviceGetPowerManagementDefaultLimit": lambda handle: 700000,
        "nvmlDeviceGetPowerManagementLimitConstraints": lambda handle: [200000, 700000],
        "nvmlDeviceGetEnforcedPowerLimit": lambda handle: 700000,
        "nvmlDeviceGetPersistenceMode": lambda handle: 1,
        "nvmlDeviceGetEccMode": lambda handle: [1, 1],
        "nvmlDeviceGetMigMode": lambda handle: [0, 0],
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda handle: 5,
        "nvmlDeviceGetMaxPcieLinkGeneration": lambda handle: 5,
        "nvmlDeviceGetCurrPcieLinkWidth": lambda handle: 16,
        "nvmlDeviceGetMaxPcieLinkWidth": lambda handle: 16,
        "nvmlDeviceGetApplicationsClock": lambda handle, clock: {sm: 1980, mem: 3201}[clock],
        "nvmlDeviceGetMaxClockInfo": lambda handle, clock: {sm: 1980, mem: 3201}[clock],
        "nvmlDeviceGetTemperature": lambda handle, sensor: 36,
        "nvmlDeviceGetPerformanceState": lambda handle: 0,
    }

    def not_supported_call(*args: Any) -> Any:
        raise pynvml.NVMLError_NotSupported()

    for name, function in functions.items():
        if name not in missing:
            setattr(fake, name, not_supported_call if name in not_supported else function)
    return fake


@pytest.fixture
def use_fake_pynvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    def install(**kwargs: Any) -> ModuleType:
        fake = fake_pynvml_h200s(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


def test_this_host_is_described_without_an_exception() -> None:
    env = host_environment()
    assert env["cpu_model"] and not is_unavailable(env["cpu_model"])
    assert isinstance(env["cpu_logical_cores"], int) and env["cpu_logical_cores"] > 0
    assert isinstance(env["cpu_physical_cores"], int) and env["cpu_physical_cores"] > 0
    assert isinstance(env["memory_total_bytes"], int) and env["memory_total_bytes"] > 2**20
    assert env["python"] == {"version": platform.python_version(), "implementation": platform.python_implementation()}
    import torch

    assert env["packages"]["torch"] == torch.__version__
    assert set(env["packages"]) == {"torch", "transformers", "vllm", "tensorrt_llm", "nvidia-ml-py"}
    assert env["cpu_governors"] and (is_unavailable(env["cpu_governors"]) or isinstance(env["cpu_governors"], dict))


@pytest.mark.skipif(_nvml_works(), reason="this box has a working NVML; the fake pynvml tests cover the GPU fields")
def test_without_nvml_the_gpus_are_unavailable_with_the_reason() -> None:
    env = host_environment()
    assert is_unavailable(env["gpus"])
    assert env["gpus"].removeprefix("unavailable:").strip()
    assert gpu_environment() == []


def test_container_detection_names_a_runtime_or_none() -> None:
    container = container_environment()
    assert isinstance(container["container"], str) and container["container"]
    assert isinstance(container["evidence"], list)
    assert (container["container"] == "none") == (container["evidence"] == [])


def test_cuda_runtime_is_read_without_importing_torch_and_nothing_heavy_is_imported() -> None:
    probe = (
        "import sys; from lem_shared.device.environment import host_environment; env = host_environment(); "
        "print(env['cuda_runtime']); print(sorted(m for m in ('torch', 'sqlalchemy', 'celery') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    import torch

    assert out[0] == (torch.version.cuda or "unavailable: torch is built without CUDA")
    assert out[1] == "[]"


def test_hash_is_stable_and_ignores_only_what_changes_from_run_to_run(use_fake_pynvml: Callable[..., Any]) -> None:
    use_fake_pynvml()
    first, second = host_environment(), host_environment()
    assert environment_hash(first) == environment_hash(second)

    warmer = copy.deepcopy(first)
    warmer["gpus"][0]["temperature_c"] = 71
    warmer["gpus"][0]["performance_state"] = "P2"
    warmer["gpus"][0]["pcie_generation_current"] = 1
    assert environment_hash(warmer) == environment_hash(first)

    newer_driver = copy.deepcopy(first)
    for gpu in newer_driver["gpus"]:
        gpu["driver_version"] = "580.160.00"
    assert environment_hash(newer_driver) != environment_hash(first)

    lower_limit = copy.deepcopy(first)
    lower_limit["gpus"][0]["power_limit_w"] = 400.0
    assert environment_hash(lower_limit) != environment_hash(first)


def test_gpu_fields_are_filled_and_unsupported_ones_are_unavailable(use_fake_pynvml: Callable[..., Any]) -> None:
    use_fake_pynvml(
        not_supported=frozenset({"nvmlDeviceGetMigMode", "nvmlDeviceGetApplicationsClock"}),
        missing=frozenset({"nvmlDeviceGetEnforcedPowerLimit"}),
    )
    gpus = gpu_environment()
    assert [gpu["uuid"] for gpu in gpus] == list(H200_UUIDS)
    gpu = gpus[0]
    assert gpu["mig_mode_current"] == gpu["mig_mode_pending"] == "unavailable: Not Supported"
    assert gpu["applications_clock_sm_mhz"] == gpu["applications_clock_mem_mhz"] == "unavailable: Not Supported"
    assert gpu["power_limit_enforced_w"] == "unavailable: nvmlDeviceGetEnforcedPowerLimit is not in this nvidia-ml-py"
    expected = {
        "name": "NVIDIA H200",
        "index": 0,
        "memory_total_bytes": 143771 * 2**20,
        "compute_capability": "9.0",
        "driver_version": "580.159.04",
        "cuda_driver_version": "13.0",
        "power_limit_w": 700.0,
        "power_limit_default_w": 700.0,
        "power_limit_min_w": 200.0,
        "power_limit_max_w": 700.0,
        "persistence_mode": "enabled",
        "ecc_mode_current": "enabled",
        "ecc_mode_pending": "enabled",
        "pcie_generation_current": 5,
        "pcie_generation_max": 5,
        "pcie_width_current": 16,
        "pcie_width_max": 16,
        "max_clock_sm_mhz": 1980,
        "max_clock_mem_mhz": 3201,
        "temperature_c": 36,
        "performance_state": "P0",
    }
    assert {key: gpu[key] for key in expected} == expected


def test_one_gpu_by_uuid_and_an_unknown_uuid_is_unavailable(use_fake_pynvml: Callable[..., Any]) -> None:
    use_fake_pynvml()
    assert [gpu["uuid"] for gpu in gpu_environment(H200_UUIDS[1])] == [H200_UUIDS[1]]
    assert gpu_environment("GPU-not-here") == []
    assert host_environment("GPU-not-here")["gpus"] == "unavailable: GPU GPU-not-here: Not Found"


def test_nvml_that_cannot_start_or_is_not_installed_is_recorded_as_unavailable(
    use_fake_pynvml: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_pynvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    assert gpu_environment() == []
    assert host_environment()["gpus"] == "unavailable: NVML: Driver Not Loaded"

    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    assert host_environment()["gpus"] == "unavailable: nvidia-ml-py is not installed"


def test_a_run_snapshot_has_only_its_gpu_and_groups_with_its_twin(use_fake_pynvml: Callable[..., Any]) -> None:
    use_fake_pynvml()
    versions = {"torch": "2.11.0", "cuda_runtime": "12.8", "transformers": "5.17.0"}
    on_gpu1 = environment_snapshot(DeviceInfo("cuda:1", "NVIDIA H200", H200_UUIDS[1]), versions)
    assert on_gpu1["kind"] == "run"
    assert [gpu["uuid"] for gpu in on_gpu1["gpus"]] == [H200_UUIDS[1]]
    assert on_gpu1["engine_versions"] == versions
    assert (on_gpu1["device"], on_gpu1["device_name"], on_gpu1["gpu_uuid"]) == ("cuda:1", "NVIDIA H200", H200_UUIDS[1])
    assert on_gpu1["hash"] == environment_hash(on_gpu1)

    # The same model of GPU, configured alike, on another index: the same environment.
    on_gpu0 = environment_snapshot(DeviceInfo("cuda:0", "NVIDIA H200", H200_UUIDS[0]), versions)
    assert on_gpu0["hash"] == on_gpu1["hash"]

    on_cpu = environment_snapshot(DeviceInfo("cpu", "cpu", None), versions)
    assert on_cpu["gpus"] == [] and on_cpu["hash"] != on_gpu1["hash"]
