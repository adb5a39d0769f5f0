"""Helpers for adapters whose engine runs in processes of its own (vLLM, TensorRT-LLM). No torch, no engine.

- which GPU or GPU set a worker's ``LEM_DEVICE`` names, as the ``CUDA_VISIBLE_DEVICES`` value the engine must
  start with (the engine then sees the set as its devices 0..n-1);
- the dtype an engine is asked for (``auto`` on a random preset means bf16, as in the PyTorch adapter);
- the Hugging Face ``config.json`` of a ``random:NAME`` Llama preset, for an engine's random-weight loader;
- the device memory in use on a GPU, read through NVML by UUID (the engine's memory is in processes we do not own).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lem_shared.config.presets import random_preset
from lem_shared.config.schema import ExperimentConfig
from lem_shared.runtime.adapter import DeviceInfo

# A random-initialised model has no dtype of its own; CUDA engines run bf16 by default, as the PyTorch adapter does.
RANDOM_MODEL_DTYPE = "bfloat16"

# Token ids LlamaConfig uses when none are given; with ignore_eos they never end a sequence.
RANDOM_MODEL_BOS_ID = 1
RANDOM_MODEL_EOS_ID = 2


def cuda_visible_devices_for(device: str, visible: str | None) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` that leaves the engine exactly the GPUs ``device`` names, or None to keep it.

    ``auto`` and ``cuda`` keep what the process was given (a container that reserved one GPU sees just that one).
    ``cuda:N`` is the N-th GPU this process can see and ``cuda:0,1`` a set of them, each taken from ``visible``
    when that is set.
    """
    if device in ("auto", "cuda"):
        return None
    kind, _, indices = device.partition(":")
    parts = indices.split(",")
    if kind != "cuda" or not all(part.strip().isdigit() for part in parts):
        raise ValueError(
            f"LEM_DEVICE={device!r}: this engine needs CUDA GPUs; use 'auto', 'cuda', 'cuda:N' or a set 'cuda:0,1'"
        )
    numbers = [int(part) for part in parts]
    if not visible:
        return ",".join(str(n) for n in numbers)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if max(numbers) >= len(entries):
        raise ValueError(
            f"LEM_DEVICE={device!r} but only {len(entries)} GPU(s) are visible (CUDA_VISIBLE_DEVICES={visible})"
        )
    return ",".join(entries[n] for n in numbers)


def gpu_set_size(device: str) -> int:
    """How many GPUs the engine of a worker with this ``LEM_DEVICE`` owns: the set's size, else 1."""
    kind, _, indices = device.partition(":")
    return len(indices.split(",")) if kind == "cuda" and indices else 1


def pin_cuda_device(device: str) -> str | None:
    """Set ``CUDA_VISIBLE_DEVICES`` for the GPU ``device`` names, before anything starts CUDA in this process.

    Returns the reason when ``device`` cannot be honoured (raised later, from ``load``, so it reaches the run).
    """
    try:
        visible = cuda_visible_devices_for(device, os.environ.get("CUDA_VISIBLE_DEVICES"))
    except ValueError as exc:
        return str(exc)
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return None


def model_folder(experiment: ExperimentConfig, prefix: str) -> tuple[str, tempfile.TemporaryDirectory[str] | None]:
    """Where the engine loads the model from: the hub id or folder itself, or for ``random:NAME`` a temporary
    folder holding only the preset's ``config.json`` (kept alive by the returned handle)."""
    if random_preset(experiment.model) is None:
        return experiment.model, None
    folder = tempfile.TemporaryDirectory(prefix=prefix)
    write_hf_config(Path(folder.name), llama_hf_config(experiment.model, engine_dtype(experiment)))
    return folder.name, folder


def cuda_device_info(index: int = 0) -> DeviceInfo:
    """Name and NVML UUID ("GPU-…", the key telemetry stores samples under) of CUDA device ``index``."""
    import torch  # only engines that bring torch call this

    props = torch.cuda.get_device_properties(index)
    raw = str(props.uuid)
    return DeviceInfo(f"cuda:{index}", str(props.name), raw if raw.startswith("GPU-") else f"GPU-{raw}")


def combined_device_info(devices: list[DeviceInfo]) -> DeviceInfo:
    """One DeviceInfo for a run on several GPUs: ``cuda:0,1``, the names (``2 x NVIDIA H200`` when alike), every
    UUID in order (the first is ``gpu_uuid``)."""
    if not devices:
        raise ValueError("combined_device_info: needs at least one device")
    if len(devices) == 1:
        return devices[0]
    names = {d.name for d in devices}
    name = f"{len(devices)} x {devices[0].name}" if len(names) == 1 else " + ".join(d.name for d in devices)
    indices = ",".join(d.device.partition(":")[2] for d in devices)
    uuids = [u for d in devices for u in d.gpu_uuids]
    return DeviceInfo(f"cuda:{indices}", name, uuids[0] if uuids else None, uuids)


def cuda_devices_info(indices: list[int]) -> DeviceInfo:
    """The CUDA devices ``indices`` (as this process numbers them) as one DeviceInfo."""
    return combined_device_info([cuda_device_info(i) for i in indices])


def engine_dtype(experiment: ExperimentConfig) -> str:
    """The dtype name handed to the engine: ``auto`` lets a checkpoint decide, a random preset has none to offer."""
    if experiment.dtype == "auto" and random_preset(experiment.model) is not None:
        return RANDOM_MODEL_DTYPE
    return experiment.dtype


def llama_hf_config(model: str, dtype: str) -> dict[str, Any]:
    """The Hugging Face ``config.json`` of the ``random:NAME`` preset ``model``: the shape the PyTorch adapter builds.

    Keys the preset leaves out take LlamaConfig's defaults, written out so every engine reads the same model.
    """
    preset = random_preset(model)
    if preset is None:
        raise ValueError(f"{model!r} is not a random:NAME preset")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": RANDOM_MODEL_BOS_ID,
        "eos_token_id": RANDOM_MODEL_EOS_ID,
        "use_cache": True,
        "torch_dtype": dtype,
    }
    for key, value in preset.items():
        config[key] = bool(value) if key == "tie_word_embeddings" else value
    return config


def write_hf_config(directory: Path, config: dict[str, Any]) -> Path:
    """Write ``config.json`` into ``directory`` (a checkpoint folder with no weights) and return the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def nvml_memory_used(gpu_uuid: str | None) -> int | None:
    """Bytes in use on the GPU with this NVML UUID (every process on it), or None when NVML cannot say."""
    if gpu_uuid is None:
        return None
    try:
        from lem_shared.device import nvml
    except ImportError:  # no pynvml on this host
        return None
    try:
        with nvml.session():
            return nvml.memory_used_bytes(nvml.handle_by_uuid(gpu_uuid))
    except nvml.NVMLError:
        return None


def device_memory_at_window_end(gpu_uuid: str | None) -> tuple[int | None, str]:
    """Peak memory for engines that reserve their KV-cache pool up front in processes of their own: the device's
    use at the window's end is their footprint."""
    used = nvml_memory_used(gpu_uuid)
    if used is None:
        return None, "unavailable (NVML unreadable)"
    return used, "nvml_device_used_at_window_end"


class SpawnedEngineAdapter:
    """What the vLLM and TensorRT-LLM adapters share: their engine runs in processes of its own, on the GPU or GPU
    set pinned before anything starts CUDA, and reserves its memory up front. A run uses the first
    ``gpus_needed`` GPUs of the set (the engine's world size: tensor x pipeline x ... parallel)."""

    package = ""  # the engine's import name
    not_installed = ""  # the message when it is missing

    def __init__(self, device: str):
        self.device = device
        self._llm: Any = None
        self._model_dir: tempfile.TemporaryDirectory[str] | None = None
        self._vocab_size: int | None = None
        self._info: DeviceInfo | None = None
        self._gpus_in_use = 1
        # The engine host is a fresh process: pin its GPUs before anything starts CUDA or the engine.
        self._device_error = pin_cuda_device(device)

    def _check_ready(self, experiment: ExperimentConfig | None = None) -> None:
        """Raised from ``load`` (not ``__init__``) so the reason reaches the failed run's record; notes how many of
        the set's GPUs the experiment's engine uses."""
        if importlib.util.find_spec(self.package) is None:
            raise RuntimeError(self.not_installed)
        if self._device_error is not None:
            raise RuntimeError(self._device_error)
        if experiment is not None:
            needed, owned = experiment.gpus_needed(), gpu_set_size(self.device)
            if needed > owned:
                raise RuntimeError(
                    f"the experiment needs {needed} GPUs but this worker owns {owned} (LEM_DEVICE={self.device}); "
                    f"run it on a worker started for a set of {needed} GPUs"
                )
            if needed != self._gpus_in_use:
                self._gpus_in_use, self._info = needed, None

    def synchronize(self) -> None:
        """Nothing to wait for: the engine's ``generate`` returns only when every request has finished."""

    def device_info(self) -> DeviceInfo:
        """The GPUs the loaded engine uses: the first ``gpus_needed`` of the set (the engine numbers them 0..)."""
        if self._info is None:
            self._info = cuda_devices_info(list(range(self._gpus_in_use)))
        return self._info

    def reset_peak_memory(self) -> None:
        """The engine's memory is in its own processes: no peak counter of ours to reset."""

    def peak_memory(self) -> tuple[int | None, str]:
        return device_memory_at_window_end(self.device_info().gpu_uuid)
