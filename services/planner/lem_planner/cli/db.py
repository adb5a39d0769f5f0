"""``lem db``: create and migrate the database (Alembic)."""

from __future__ import annotations

from typing import Annotated

import typer

from lem_planner.cli.console import fail, out, print_json
from lem_shared.settings import get_settings

db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)


@db_cli.command("upgrade")
def db_upgrade(
    revision: str = "head", as_json: Annotated[bool, typer.Option("--json", help="Print {revision} as JSON.")] = False
) -> None:
    """Create the database if needed and migrate it to REVISION (alembic upgrade)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from lem_shared.db.migrate import upgrade
    from lem_shared.redact import redact

    url = get_settings().database_url
    try:
        upgrade(revision=revision)
    except (OperationalError, ProgrammingError) as exc:  # `lem db upgrade` cannot be the fix for itself
        cause = redact(str(exc.orig).strip().splitlines()[0])
        name = make_url(url).database
        if isinstance(exc, ProgrammingError) or "permission denied" in cause:
            fix = (
                f"create the database yourself (`createdb {name}`, as a user allowed to) or give LEM_DATABASE_URL "
                "a user with CREATEDB, then run this again"
            )
        else:
            fix = "start PostgreSQL (`make services`) or set LEM_DATABASE_URL to a server that runs"
        raise fail(f"cannot migrate the database at {redact(url)}: {cause}; {fix}") from None
    if as_json:
        print_json({"revision": revision})
        return
    out.print(f"database at revision {revision}")
