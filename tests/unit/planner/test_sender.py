"""The planner's sender app follows the settings: commands run in one process (tests, an embedding program) whose
broker changes never send through an app made for the broker before."""

from __future__ import annotations

import pytest

from lem_planner.sender import sender
from lem_shared.settings import get_settings


def test_the_sender_is_made_for_the_current_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEM_BROKER_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    first = sender()
    assert first.conf.broker_url == "redis://127.0.0.1:1/0" and sender() is first
    monkeypatch.setenv("LEM_BROKER_URL", "redis://127.0.0.1:2/0")
    get_settings.cache_clear()
    assert sender().conf.broker_url == "redis://127.0.0.1:2/0"
    monkeypatch.undo()
    get_settings.cache_clear()
