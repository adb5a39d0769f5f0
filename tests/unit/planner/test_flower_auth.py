"""lem-flower's login: LEM_FLOWER_USER/PASSWORD become Flower's basic auth (through the environment, not the
command line); without them Flower is told to listen on 127.0.0.1 only and says it is unauthenticated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lem_planner.flower import flower_argv
from lem_shared.settings import get_settings


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for key in list(os.environ):
        if key.startswith(("FLOWER_", "LEM_FLOWER_")):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    os.environ.pop("FLOWER_BASIC_AUTH", None)  # set by flower_argv itself, not through monkeypatch
    get_settings.cache_clear()


def test_the_login_goes_to_flower_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEM_FLOWER_USER", "ops")
    monkeypatch.setenv("LEM_FLOWER_PASSWORD", "s3cret")
    assert flower_argv(["--port=5555"]) == ["--port=5555"]
    assert os.environ["FLOWER_BASIC_AUTH"] == "ops:s3cret"


def test_without_a_login_flower_is_bound_to_localhost_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert flower_argv(["--address=0.0.0.0", "--port=5555"]) == [
        "--address=0.0.0.0",
        "--port=5555",
        "--address=127.0.0.1",
    ]
    assert "without authentication, on 127.0.0.1 only" in capsys.readouterr().err
    assert "FLOWER_BASIC_AUTH" not in os.environ


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"LEM_FLOWER_USER": "ops"}, [], "both"),
        ({"LEM_FLOWER_PASSWORD": "s3cret"}, [], "both"),
        ({"LEM_FLOWER_USER": "a:b", "LEM_FLOWER_PASSWORD": "s3cret"}, [], "may not contain"),
        ({"FLOWER_BASIC_AUTH": "ops:s3cret"}, [], "instead of Flower's basic auth"),
        ({}, ["--basic-auth=ops:s3cret"], "instead of Flower's basic auth"),
    ],
)
def test_a_half_or_foreign_login_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        flower_argv(argv)
    assert message in str(exit_.value.code) and "s3cret" not in str(exit_.value.code)
