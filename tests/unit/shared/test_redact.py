"""lem_shared.redact: the one redaction of database and broker URLs in output (doctor, CLI errors, logs)."""

from __future__ import annotations

import pytest

from lem_shared.redact import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://lem:S3cret@127.0.0.1:1/x", "postgresql+psycopg://lem:***@127.0.0.1:1/x"),
        ("redis://:S3cret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        (
            "rediss://default:S3cret@cache.example:6380/0?ssl_cert_reqs=none",
            "rediss://default:***@cache.example:6380/0?ssl_cert_reqs=none",
        ),
        ("redis://:p@ss@S3cret@host:6379/0", "redis://:***@host:6379/0"),  # an unencoded '@' in the password
        (
            "postgresql://lem@db/lem?password=S3cret&sslmode=require",
            "postgresql://lem@db/lem?password=***&sslmode=require",
        ),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/lem", "postgresql+psycopg://postgres@127.0.0.1:5432/lem"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite:///tmp/lem.db", "sqlite:///tmp/lem.db"),
    ],
)
def test_a_url_loses_its_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_urls_inside_a_message_are_redacted_too() -> None:
    message = (
        "cannot use postgresql+psycopg://lem:S3cret@db:5432/lem (tried twice); broker "
        "redis://:S3cret@127.0.0.1:1/0: refused"
    )
    assert redact(message) == (
        "cannot use postgresql+psycopg://lem:***@db:5432/lem (tried twice); broker redis://:***@127.0.0.1:1/0: refused"
    )
    assert "S3cret" not in redact(message)
