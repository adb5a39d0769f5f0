"""Beacons in the database (the embedded stack's heartbeats and cancel flags) on a real, migrated SQLite file:
written and read back as JSON, replaced, scanned by prefix (a LIKE wildcard in the prefix is literal), gone after
their lifetime on the database's clock, deleted; and the embedded broker's housekeeping."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lem_shared.db.beacons import DatabaseBeacons
from lem_shared.db.migrate import upgrade
from lem_shared.settings import Settings
from lem_shared.wire.celery_app import broker_options, prune_broker_folder
from lem_shared.wire.heartbeat import WORKER_KEY_PREFIX, live_workers


@pytest.fixture
def store(tmp_path: Path) -> DatabaseBeacons:
    url = f"sqlite:///{tmp_path / 'sub' / 'lem.db'}"  # the folder is created
    upgrade(url)
    return DatabaseBeacons(url)


def test_put_get_scan_replace_delete(store: DatabaseBeacons) -> None:
    store.put([(WORKER_KEY_PREFIX + "a@h", {"name": "a@h", "gpus": 2}), ("lem:other", {"x": 1.5})], 30)
    assert store.get("lem:other") == {"x": 1.5}
    assert live_workers(store) == {"a@h": {"name": "a@h", "gpus": 2}}
    store.put([(WORKER_KEY_PREFIX + "a@h", {"name": "a@h", "gpus": 4})], 30)
    assert live_workers(store)["a@h"]["gpus"] == 4
    store.put([("lem_x", {"y": 1})], 30)
    assert set(store.scan("lem_")) == {"lem_x"}  # '_' is not a wildcard
    store.delete(WORKER_KEY_PREFIX + "a@h")
    assert live_workers(store) == {} and store.get("missing") is None
    assert store.up_s() == float("inf")


def test_a_beacon_is_gone_after_its_lifetime(store: DatabaseBeacons) -> None:
    store.put([("lem:short", {"v": 1})], 0.3)
    assert store.get("lem:short") == {"v": 1}
    time.sleep(0.5)
    assert store.get("lem:short") is None and store.scan("lem:") == {}


def test_the_embedded_broker_folder_is_pruned_of_old_files_but_never_of_runs(tmp_path: Path) -> None:
    settings = Settings(broker_url=f"filesystem://{tmp_path / 'broker'}", database_url="sqlite://")
    options = broker_options(settings)
    messages, processed = Path(options["data_folder_in"]), Path(options["processed_folder"])
    run = messages / "1_a.gpu.pytorch.msg"
    event = messages / "2_b.celeryev.0f3a.msg"
    fresh_event = messages / "3_c.celeryev.0f3a.msg"
    done = processed / "0_d.gpu.pytorch.msg"
    for path in (run, event, fresh_event, done):
        path.write_text("{}")
    old = time.time() - 3600
    for path in (run, event, done):
        os.utime(path, (old, old))
    assert prune_broker_folder(settings, older_than_s=600) == 2
    assert run.exists() and fresh_event.exists() and not event.exists() and not done.exists()
