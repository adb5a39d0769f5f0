"""The engine host: a spawned process that owns the engine and keeps its model loaded between runs.

CUDA cannot be re-initialised after fork and vLLM / TensorRT-LLM start helper processes, so the engine never
lives in the Celery worker itself. Requests and answers cross the pipe as JSON bytes (never pickle). A crash,
an OOM kill or a hang of the engine fails the run with the reason and the next run gets a fresh engine host.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from lem_shared.config.schema import ExperimentConfig
from lem_shared.params.snapshots import installed_context
from lem_shared.wire.messages import Measurement

log = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """The run could not be measured; the message says why."""


def _load_adapter(path: str, device: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)(device=device)


def engine_main(adapter_path: str, device: str, conn: Connection) -> None:
    """Entry point of the spawned process: answer measure requests until told to stop or the pipe closes."""
    from lem_shared.runtime.measure import MeasurementRuntime

    logging.basicConfig(level=logging.INFO, format="[engine-host] %(levelname)s %(message)s")
    adapter = _load_adapter(adapter_path, device)
    runtime = MeasurementRuntime(adapter)
    # Sections are checked against the snapshot of the engine this process runs, not the newest committed one.
    context = installed_context(adapter.versions())
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if request.get("op") == "stop":
            return
        try:
            experiment = ExperimentConfig.model_validate(request["experiment"], context=context)
            measurement = runtime.measure(experiment, deep_idle_s=float(request.get("deep_idle_s", 0.0)))
            answer = {"ok": True, "measurement": measurement.model_dump(mode="json")}
        except Exception as exc:  # noqa: BLE001 - every engine error becomes a failed run, with its reason
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        conn.send_bytes(json.dumps(answer).encode())


class EngineHost:
    """The worker's handle on its engine process: started on first use, restarted after a failure."""

    def __init__(self, adapter_path: str, device: str, timeout_s: float):
        self.adapter_path, self.device, self.timeout_s = adapter_path, device, timeout_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        # Not daemonic: vLLM and TensorRT-LLM start processes of their own.
        process = ctx.Process(
            target=engine_main, args=(self.adapter_path, self.device, child), name="lem-engine-host", daemon=False
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        log.info("engine host started (pid %s, adapter %s, device %s)", process.pid, self.adapter_path, self.device)

    def measure(self, experiment: dict[str, Any], deep_idle_s: float = 0.0) -> Measurement:
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            assert self._conn is not None and self._process is not None
            request = {"op": "measure", "experiment": experiment, "deep_idle_s": deep_idle_s}
            self._conn.send_bytes(json.dumps(request).encode())
            deadline = time.monotonic() + self.timeout_s
            while not self._conn.poll(0.5):
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self._discard()
                    raise EngineFailure(f"engine host died during the run (exit code {code}); it will be restarted")
                if time.monotonic() > deadline:
                    self._discard()
                    raise EngineFailure(f"engine did not answer within {self.timeout_s:.0f} s; engine host restarted")
            try:
                answer = json.loads(self._conn.recv_bytes())
            except (EOFError, OSError) as exc:
                # A process that dies closes its pipe, which poll() reports as readable: say how it ended.
                self._process.join(5)
                code = self._process.exitcode
                self._discard()
                if code is not None:
                    raise EngineFailure(
                        f"engine host died during the run (exit code {code}); it will be restarted"
                    ) from exc
                raise EngineFailure(f"engine host closed its pipe: {exc}") from exc
        if not answer["ok"]:
            log.error("engine error:\n%s", answer.get("traceback", ""))
            raise EngineFailure(answer["error"])
        return Measurement.model_validate(answer["measurement"])

    def abort(self) -> None:
        """Kill the engine process now, from any thread: a measure() in progress fails at once (cancel)."""
        process = self._process
        if process is not None and process.is_alive():
            process.kill()

    def _discard(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        self._process, self._conn = None, None

    def stop(self) -> None:
        with self._lock:
            if self._process is not None and self._process.is_alive() and self._conn is not None:
                try:
                    self._conn.send_bytes(json.dumps({"op": "stop"}).encode())
                    self._process.join(30)
                except OSError:
                    pass
            self._discard()
