"""The one way a database or broker URL reaches output: with its password replaced by ``***``.

``redact`` works on any text, so an error message that quotes a URL is cleaned as well as the URL itself:
``postgresql+psycopg://lem:S3cret@db:5432/lem`` -> ``postgresql+psycopg://lem:***@db:5432/lem``,
``redis://:S3cret@127.0.0.1:6379/0`` -> ``redis://:***@127.0.0.1:6379/0``, and a password given as a query
parameter (``?password=S3cret``) -> ``?password=***``. A URL without a password is left as it is.
Standard library only: the telemetry daemon, the workers and the CLI all import it.
"""

from __future__ import annotations

import re

# scheme://user:PASSWORD@host — the password runs to the last '@' before the path, query or whitespace, so a
# password holding an unencoded '@' is hidden whole.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^\s/?#]*)@")
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|pass)=)(?P<password>[^&#\s]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    text = _USERINFO.sub(lambda m: m["head"] + ("***" if m["password"] else "") + "@", text)
    return _QUERY.sub(lambda m: m["head"] + "***", text)
