"""Energy of a block of one's own code on this machine's GPUs, with no service running: ``lem.measure``.

A ``Sampler`` thread reads every GPU through ``lem_shared.device.nvml`` (power and the other cheap fields every
``interval_s``, the energy counter every ``counter_interval_s``), started when the first window opens and stopped
when the last one closes. Each window also reads the counter at its own edges, as the runtime's ``EdgeMeter``
does (open: read, then stamp; close: stamp, then read), and is analysed by ``analyse_window``: the same energy,
checks and verdict as a campaign's run. Windows may nest and overlap; each keeps the samples of its own span.

Without NVML (a CPU host, no driver, no GPU) a window has no energy (``energy_j`` None, ``note`` says why) and its
verdict is ``"n/a"``: nothing was measured that a verdict could vouch for. Its ``checks`` are still those a run
without telemetry gets (window length, warm-up and batch checks skipped, every energy check "n/a").
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lem_shared.measure.analysis import (
    Check,
    RunContext,
    TelemetrySample,
    Thresholds,
    WindowAnalysis,
    analyse_window,
    checks_without_telemetry,
    verdict_of,
)

NOT_APPLICABLE = "n/a"


class GpuReadout(Protocol):
    """The cheap fields of one GPU read now (None where the GPU does not report one)."""

    @property
    def power_w(self) -> float | None: ...
    @property
    def power_instant_w(self) -> float | None: ...
    @property
    def temperature_c(self) -> float | None: ...
    @property
    def sm_clock_mhz(self) -> int | None: ...
    @property
    def clock_event_reasons(self) -> int | None: ...
    @property
    def utilization_gpu(self) -> int | None: ...


class GpuSource(Protocol):
    """GPUs addressed by their position in ``gpu_uuids`` (telemetry's replayed trace fits it too)."""

    @property
    def gpu_uuids(self) -> list[str]: ...

    def read_gpu(self, position: int) -> GpuReadout: ...

    def read_energy(self, position: int) -> int | None:
        """The GPU's energy counter in mJ, None when it has none."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NvmlReadout:
    power_w: float | None
    power_instant_w: float | None
    temperature_c: float | None
    sm_clock_mhz: int | None
    clock_event_reasons: int | None
    utilization_gpu: int | None


class NvmlGpus:
    """Every GPU of this host through NVML; raises (ImportError, NVMLError, ValueError) where there is none."""

    def __init__(self) -> None:
        from lem_shared.device import nvml  # pynvml only where someone measures

        self._nvml = nvml
        nvml.init()
        try:
            handles = [nvml.handle_by_index(i) for i in range(nvml.device_count())]
            if not handles:
                raise ValueError("NVML found no GPU on this host")
            self._handles = handles
            self._uuids = [nvml.uuid_of(h) for h in handles]
            self._instant = ["power_instant_w" in nvml.supported_power_fields(h) for h in handles]
        except BaseException:
            nvml.shutdown()
            raise

    @property
    def gpu_uuids(self) -> list[str]:
        return list(self._uuids)

    def _field(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except self._nvml.NVMLError:
            return None  # a field this GPU or driver does not answer

    def read_gpu(self, position: int) -> NvmlReadout:
        nvml, handle = self._nvml, self._handles[position]
        power_mw = self._field(nvml.power_usage_mw, handle)
        instant = (
            (self._field(nvml.read_power_fields, handle, ("power_instant_w",)) or {}).get("power_instant_w")
            if self._instant[position]
            else None
        )
        temperature = self._field(nvml.temperature_c, handle)
        utilization = self._field(nvml.utilization, handle)
        return NvmlReadout(
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_instant_w=instant,
            temperature_c=None if temperature is None else float(temperature),
            sm_clock_mhz=self._field(nvml.sm_clock_mhz, handle),
            clock_event_reasons=self._field(nvml.clock_event_reasons, handle),
            utilization_gpu=None if utilization is None else int(utilization.gpu),
        )

    def read_energy(self, position: int) -> int | None:
        return self._field(self._nvml.energy_mj, self._handles[position])

    def close(self) -> None:
        self._nvml.shutdown()


def _positive_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds (e.g. 0.02), got {value!r}")
    return float(value)


class Sampler:
    """Samples every GPU of a source while at least one window is open.

    ``source_factory`` opens the GPUs (default: NVML); when it raises, the windows have no energy and say why.
    ``clock`` stamps samples and window edges (Unix seconds by default; a replay can run on its own clock).
    ``background=False`` starts no thread: samples are then taken only at the windows' edges and by ``sample()``
    (a replay driven step by step).
    """

    def __init__(
        self,
        source_factory: Callable[[], GpuSource] = NvmlGpus,
        *,
        interval_s: float = 0.02,
        counter_interval_s: float = 0.1,
        clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        self.interval_s = _positive_seconds("interval_s", interval_s)
        self.counter_interval_s = _positive_seconds("counter_interval_s", counter_interval_s)
        self.clock, self.background = clock, background
        self._factory = source_factory
        self._lock = threading.RLock()
        self._source: GpuSource | None = None
        self._uuids: list[str] = []
        self._samples: dict[str, list[TelemetrySample]] = {}
        self._dropped = 0  # samples pruned from the front of every GPU's list (all lists grow together)
        self._open: dict[int, int] = {}  # id(window) -> index of its first sample
        self._next_counter = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.unavailable: str | None = None  # why the last opening found no GPU to read

    @property
    def running(self) -> bool:
        """Whether the source is open (a window is open and found GPUs)."""
        return self._source is not None

    @property
    def gpu_uuids(self) -> list[str]:
        return list(self._uuids)

    def _acquire(self, window: Measurement) -> bool:
        """Open the source for a window (the first one starts the sampler); False when there is no GPU."""
        with self._lock:
            if self._source is None and not self._open:
                try:
                    source = self._factory()
                    uuids = list(source.gpu_uuids)
                    if not uuids:
                        source.close()
                        raise ValueError("the GPU source found no GPU")
                except Exception as exc:  # noqa: BLE001 - no pynvml, no driver, no GPU: measured as n/a
                    self.unavailable = f"{type(exc).__name__}: {exc}"
                    self._open[id(window)] = 0
                    return False
                self._source, self._uuids, self.unavailable = source, uuids, None
                self._samples = {uuid: [] for uuid in uuids}
                self._dropped = 0
                self._next_counter = self.clock()
                self.sample(counter=True)  # a sample before the first window's edge, for the interpolation
                if self.background:
                    self._start_thread()
            self._open[id(window)] = self._dropped + self._first_bracket()
            return self._source is not None

    def _first_bracket(self) -> int:
        """Index (in the lists) where a new window's samples begin: the last counter row and the last power row
        taken so far, whichever is earlier, so that both readings reach past the window's start."""
        samples = self._samples[self._uuids[0]] if self._uuids else []
        seen_counter = seen_power = False
        for index in range(len(samples) - 1, -1, -1):
            seen_counter = seen_counter or samples[index].energy_mj is not None
            seen_power = seen_power or samples[index].power_w is not None
            if seen_counter and seen_power:
                return index
        return 0

    def _release(self, window: Measurement) -> dict[str, list[TelemetrySample]]:
        """The window's samples (one past its end included); the last window closing stops the sampler."""
        with self._lock:
            first = self._open.pop(id(window)) - self._dropped
            if self._source is not None:
                self.sample(counter=True)  # a sample past the edge, for the interpolation
            taken = {uuid: list(samples[max(first, 0) :]) for uuid, samples in self._samples.items()}
            if self._open:
                keep_from = min(self._open.values()) - self._dropped
                if keep_from > 0:
                    for samples in self._samples.values():
                        del samples[:keep_from]
                    self._dropped += keep_from
                return taken
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None:
            thread.join()
        with self._lock:
            if self._open:  # a window opened while the thread stopped: it samples on
                if self._source is not None and self.background and self._thread is None:
                    self._start_thread()
            elif self._source is not None:
                self._source.close()
                self._source, self._samples, self._uuids = None, {}, []
        return taken

    def _start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lem-measure-sampler", daemon=True)
        self._thread.start()

    def edge(self, opening: bool) -> tuple[float, dict[str, int | None]]:
        """The energy counter of every GPU at a window's edge: opening reads then stamps, closing stamps then
        reads, so the window holds neither read's own cost."""
        with self._lock:
            source = self._source
            if source is None:
                return self.clock(), {}
            stamp = None if opening else self.clock()
            counters = {uuid: source.read_energy(position) for position, uuid in enumerate(self._uuids)}
            return (self.clock() if stamp is None else stamp), counters

    def sample(self, counter: bool = False) -> None:
        """Read every GPU now: the cheap fields, and the energy counter when it is due (or ``counter``)."""
        with self._lock:
            source = self._source
            if source is None:
                return
            now = self.clock()
            read_counter = counter or now >= self._next_counter
            if read_counter:
                self._next_counter = now + self.counter_interval_s
            for position, uuid in enumerate(self._uuids):
                readout = source.read_gpu(position)
                t = self.clock()
                self._samples[uuid].append(
                    TelemetrySample(
                        t=t,
                        power_w=readout.power_w,
                        energy_mj=None,
                        temperature_c=readout.temperature_c,
                        sm_clock_mhz=readout.sm_clock_mhz,
                        clock_event_reasons=readout.clock_event_reasons,
                        utilization_gpu=readout.utilization_gpu,
                        power_instant_w=readout.power_instant_w,
                    )
                )
                if read_counter:  # the counter in a row of its own (power None), as telemetry stores it
                    energy = source.read_energy(position)
                    self._samples[uuid].append(TelemetrySample(t=self.clock(), power_w=None, energy_mj=energy))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


_default_sampler: Sampler | None = None
_default_lock = threading.Lock()


def default_sampler() -> Sampler:
    """The process's one NVML sampler, made on first use."""
    global _default_sampler
    with _default_lock:
        if _default_sampler is None:
            _default_sampler = Sampler()
        return _default_sampler


class Measurement:
    """One energy window: ``with lem.measure("name") as m: ...`` or ``m.begin()`` ... ``m.end()``.

    After it ends: ``energy_j`` (J, every GPU summed), ``j_per_token(tokens)``, ``verdict`` (valid, warning,
    invalid, or n/a without NVML), ``checks``, ``note``, ``analyses`` (each GPU's ``WindowAnalysis``) and ``samples``.
    """

    def __init__(self, name: str, sampler: Sampler, thresholds: Thresholds) -> None:
        self.name, self.sampler, self.thresholds = name, sampler, thresholds
        self.start: float | None = None
        self.end_time: float | None = None
        self.gpu_uuids: list[str] = []
        self.samples: dict[str, list[TelemetrySample]] = {}
        self.analyses: dict[str, WindowAnalysis] = {}
        self.checks: list[Check] = []
        self.note: str | None = None
        self._counters_at_start: dict[str, int | None] = {}
        self._edges: dict[str, float | None] = {}
        self._edge_notes: dict[str, str | None] = {}
        self._verdict: str | None = None

    def begin(self) -> Measurement:
        if self.start is not None:
            raise RuntimeError(f"measurement {self.name!r} was already begun: make a new lem.measure for a new window")
        self.start = math.nan  # begun; the stamp follows the edge read
        available = self.sampler._acquire(self)
        self.start, self._counters_at_start = self.sampler.edge(opening=True)
        self.gpu_uuids = self.sampler.gpu_uuids if available else []
        return self

    def end(self) -> Measurement:
        if self.start is None:
            raise RuntimeError(f"measurement {self.name!r} has not begun: call begin() or use it in a with block")
        if self.end_time is not None:
            raise RuntimeError(f"measurement {self.name!r} has already ended")
        self.end_time, counters = self.sampler.edge(opening=False)
        self.samples = self.sampler._release(self)
        self._analyse(counters)
        return self

    def __enter__(self) -> Measurement:
        return self.begin()

    def __exit__(self, *exc_info: object) -> None:
        self.end()

    def _analyse(self, counters_at_end: dict[str, int | None]) -> None:
        assert self.start is not None and self.end_time is not None
        if not self.gpu_uuids:
            reason = self.sampler.unavailable or "no GPU source"
            self.note = f"n/a (no NVML): {reason}"
            self.checks = checks_without_telemetry(self.duration_s, None, RunContext(), self.thresholds)
            self._verdict = NOT_APPLICABLE
            return
        for uuid in self.gpu_uuids:
            before, after = self._counters_at_start.get(uuid), counters_at_end.get(uuid)
            if before is None or after is None:
                self._edges[uuid], self._edge_notes[uuid] = None, f"no energy counter read for {uuid} at both edges"
            elif after < before:  # two reads cannot bridge a reset: the sampler's counter rows can
                self._edges[uuid], self._edge_notes[uuid] = None, "the energy counter reset inside the window"
            else:
                self._edges[uuid], self._edge_notes[uuid] = (after - before) / 1000.0, None
            self.analyses[uuid] = analyse_window(
                self.samples[uuid],
                self.start,
                self.end_time,
                name=self.name,
                context=RunContext(interval_s=self.sampler.interval_s),
                thresholds=self.thresholds,
                edge_energy_j=self._edges[uuid],
                edge_note=self._edge_notes[uuid],
            )
        several = len(self.gpu_uuids) > 1
        self.checks = [
            Check(c.name, c.status, f"GPU {uuid}: {c.message}" if several else c.message)
            for uuid, analysis in self.analyses.items()
            for c in analysis.checks
        ]
        self._verdict = verdict_of(self.checks)
        failed = [c.message for c in self.checks if c.status == "fail"]
        self.note = "; ".join(failed) or None

    def _ended(self, what: str) -> None:
        if self.end_time is None:
            raise RuntimeError(f"measurement {self.name!r} is still open: read {what} after its with block (or end())")

    @property
    def duration_s(self) -> float:
        self._ended("duration_s")
        assert self.start is not None and self.end_time is not None
        return self.end_time - self.start

    @property
    def energy_j(self) -> float | None:
        """Joules over the window, every GPU summed: the counter at the edges, else the sampler's counter rows;
        None without NVML or when a GPU has neither."""
        self._ended("energy_j")
        energies = [analysis.energy_j for analysis in self.analyses.values()]
        if not energies or any(e is None for e in energies):
            return None
        return float(sum(e for e in energies if e is not None))

    @property
    def verdict(self) -> str:
        """``valid``, ``warning`` or ``invalid`` by the run's rules; ``n/a`` without NVML."""
        self._ended("verdict")
        assert self._verdict is not None
        return self._verdict

    @property
    def mean_power_w(self) -> float | None:
        energy = self.energy_j
        return energy / self.duration_s if energy is not None and self.duration_s > 0 else None

    def j_per_token(self, tokens: int) -> float | None:
        """Joules per token for ``tokens`` produced in the window (a positive whole number); None without energy."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise ValueError(
                f"tokens must be a positive whole number (the tokens produced in the window), got {tokens!r}"
            )
        energy = self.energy_j
        return None if energy is None else energy / tokens

    def to_dict(self) -> dict[str, Any]:
        """The window's figures as plain values (JSON-ready)."""
        return {
            "name": self.name,
            "start": self.start,
            "end": self.end_time,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "mean_power_w": self.mean_power_w,
            "verdict": self.verdict,
            "note": self.note,
            "gpu_uuids": list(self.gpu_uuids),
            "checks": [{"name": c.name, "status": c.status, "message": c.message} for c in self.checks],
            "per_gpu": {uuid: a.to_dict() for uuid, a in self.analyses.items()},
        }

    def __repr__(self) -> str:
        if self.end_time is None:
            return f"<lem.Measurement {self.name!r} open>"
        energy = "n/a" if self.energy_j is None else f"{self.energy_j:.1f} J"
        return f"<lem.Measurement {self.name!r} {self.duration_s:.2f} s {energy} {self.verdict}>"


def measure(
    name: str = "window", *, sampler: Sampler | None = None, thresholds: Thresholds | None = None
) -> Measurement:
    """A window to measure: use it as ``with lem.measure("name") as m:`` (or ``begin()``/``end()``)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string naming the window (e.g. 'decode'), got {name!r}")
    if sampler is not None and not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a lem.Sampler (or left out for this machine's GPUs), got {sampler!r}")
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise ValueError(f"thresholds must be a lem.Thresholds, e.g. Thresholds(min_window_s=2), got {thresholds!r}")
    return Measurement(name, sampler or default_sampler(), thresholds or Thresholds())
