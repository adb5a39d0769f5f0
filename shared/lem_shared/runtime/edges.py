"""The energy counter read at a window's exact edges, in the engine host, as Zeus reads it.

Telemetry samples every 100 ms and the finaliser interpolates across a window's edges, which misses what happens
between the last sample and the edge on a rising or falling load (a 2 s window read 4.6 % low on the H200). So
the runtime reads every GPU of the run itself, right after the device synchronise that opens or closes the
window: the window's energy is the difference of those reads, and telemetry's interpolation stays beside it as
an independent cross-check. A GPU host without NVML (or a CPU run) has no edge reads.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from lem_shared.wire.messages import EdgeRead, GpuEdge

log = logging.getLogger(__name__)


class GpuReader(Protocol):
    """Reads one GPU's energy counter (mJ) and instantaneous power (W) now; None for what it lacks."""

    def read(self, gpu_uuid: str) -> GpuEdge: ...

    def close(self) -> None: ...


class NvmlReader:
    """The GPUs of this host through NVML, by UUID (the key telemetry stores samples under)."""

    def __init__(self, gpu_uuids: list[str]):
        from lem_shared.device import nvml  # pynvml only where a run has GPUs

        self._nvml = nvml
        nvml.init()
        self._handles = {uuid: nvml.handle_by_uuid(uuid) for uuid in gpu_uuids}
        self._instant = {
            uuid: "power_instant_w" in nvml.supported_power_fields(handle) for uuid, handle in self._handles.items()
        }

    def read(self, gpu_uuid: str) -> GpuEdge:
        handle = self._handles[gpu_uuid]
        energy = self._nvml.energy_mj(handle)
        power = (
            self._nvml.read_power_fields(handle, ("power_instant_w",))["power_instant_w"]
            if self._instant[gpu_uuid]
            else None
        )
        return GpuEdge(energy_mj=energy, power_instant_w=power)

    def close(self) -> None:
        self._nvml.shutdown()


class EdgeMeter:
    """Reads every GPU of a run at one edge; the window is stamped outside the reads' own cost."""

    def __init__(self, reader: GpuReader, gpu_uuids: list[str]):
        self.reader, self.gpu_uuids = reader, gpu_uuids

    def _read_all(self) -> tuple[dict[str, GpuEdge], float]:
        began = time.perf_counter()
        gpus = {uuid: self.reader.read(uuid) for uuid in self.gpu_uuids}
        return gpus, time.perf_counter() - began

    def open_window(self) -> EdgeRead:
        """Read, then stamp: the window starts when the reads return."""
        gpus, cost = self._read_all()
        return EdgeRead(t=time.time(), read_s=cost, gpus=gpus)

    def close_window(self) -> EdgeRead:
        """Stamp, then read: the window ends before the reads begin."""
        t = time.time()
        gpus, cost = self._read_all()
        return EdgeRead(t=t, read_s=cost, gpus=gpus)

    def close(self) -> None:
        self.reader.close()


def nvml_edge_meter(gpu_uuids: list[str]) -> EdgeMeter | None:
    """An edge meter over NVML for these GPUs, or None (said once in the log) where NVML cannot read them."""
    if not gpu_uuids:
        return None
    try:
        return EdgeMeter(NvmlReader(gpu_uuids), gpu_uuids)
    except Exception as exc:  # noqa: BLE001 - no NVML, no such GPU: the run keeps telemetry's figure
        log.warning(
            "no energy-counter reads at window edges (%s: %s); telemetry's interpolation is the figure",
            type(exc).__name__,
            exc,
        )
        return None
