"""The control worker's loop: every ``dispatch_interval_s``, re-queue runs whose worker vanished, close campaigns
whose runs have all ended, re-send finalisation nobody did, dispatch what is free, and tidy the embedded broker."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from lem_planner.campaigns import close_finished_campaigns
from lem_shared.dispatch import advance, reclaim, refinalise_stale
from lem_shared.settings import get_settings
from lem_shared.wire.celery_app import prune_broker_folder
from lem_shared.wire.heartbeat import beacons

log = logging.getLogger(__name__)


def scheduler_pass(app: Celery) -> None:
    """One pass: re-queue runs whose worker vanished, re-send finalisation nobody did, dispatch what is free, and
    tidy the embedded broker's folder."""
    settings = get_settings()
    store = beacons()
    try:
        for change in reclaim(store):
            log.warning("%s", change)
        close_finished_campaigns()
        refinalise_stale(app, older_than_s=settings.energy_wait_s + 120)
        advance(app, store)
    finally:
        store.close()
    prune_broker_folder(settings)


class SchedulerLoop:
    """``scheduler_pass`` in a daemon thread until stopped; a failed pass (a broker or database outage) is logged
    and the next one runs an interval later."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._stop = threading.Event()

    def start(self) -> None:
        interval = get_settings().dispatch_interval_s

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    scheduler_pass(self.app)
                except Exception:  # noqa: BLE001 - a broker or database outage must not end the loop
                    log.exception("scheduler pass failed; retrying in %.0f s", interval)

        threading.Thread(target=loop, name="lem-scheduler", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
