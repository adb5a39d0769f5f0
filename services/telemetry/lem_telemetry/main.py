"""``lem-telemetry``: one per GPU host; samples every GPU through NVML (or host figures only, without NVML)
at a fixed interval, always, and writes the samples to PostgreSQL in batches. Stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from pydantic import ValidationError

from lem_shared.settings import Settings, get_settings
from lem_telemetry.daemon import TelemetryDaemon


def _settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="lem-telemetry", description=__doc__)
    parser.add_argument("--source", help="'nvml' or 'replay:PATH' (default: LEM_TELEMETRY_SOURCE)")
    parser.add_argument("--interval", type=float, help="seconds between samples (default: LEM_TELEMETRY_INTERVAL_S)")
    args = parser.parse_args(argv)
    overrides = {"telemetry_source": args.source, "telemetry_interval_s": args.interval}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:  # the settings' own bounds (an interval of at least 10 ms, ...) apply to the options too
        settings = get_settings()
        return Settings.model_validate(settings.model_dump() | overrides) if overrides else settings
    except ValidationError as error:
        parser.error("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(argv)
    if line := settings.stack_line():
        logging.getLogger(__name__).info("%s", line)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # The daemon runs in its own thread: a signal handler runs in the main thread, and setting the event
    # there while that same thread is inside stop.wait() could deadlock on the event's internal lock.
    daemon = TelemetryDaemon(settings, stop)
    exit_code = 1

    def run() -> None:
        nonlocal exit_code
        exit_code = daemon.run()

    runner = threading.Thread(target=run, name="telemetry-sampler")
    runner.start()
    while runner.is_alive():
        runner.join(0.5)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
