"""The root ``lem`` command: its groups, ``--version``, and ``main`` (the console script), which turns a database
or broker outage, or a file that cannot be read or written, into one line naming the fix."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lem_planner.cli.bundle import bundle_cli
from lem_planner.cli.campaign import campaign_cli
from lem_planner.cli.console import EXIT_FAILED, err
from lem_planner.cli.db import db_cli
from lem_planner.cli.doctor import doctor_command
from lem_planner.cli.energy import energy_cli
from lem_planner.cli.params import params_cli
from lem_planner.cli.results import results_cli
from lem_planner.cli.schedule import schedule_cli
from lem_shared.settings import get_settings

cli = typer.Typer(
    help="LLenergyMeasure: what LLM inference costs, in joules, seconds and tokens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(campaign_cli, name="campaign")
cli.add_typer(results_cli, name="results")
cli.add_typer(db_cli, name="db")
cli.add_typer(energy_cli, name="energy")
cli.add_typer(params_cli, name="params")
cli.add_typer(bundle_cli, name="bundle")
cli.add_typer(schedule_cli, name="schedule")
cli.command("doctor")(doctor_command)


def _version(value: bool) -> None:
    """``lem --version``: the tool version and the database schema revision it writes."""
    if value:
        from lem_shared import TOOL_VERSION
        from lem_shared.db.models import SCHEMA_VERSION

        typer.echo(f"{TOOL_VERSION} (database schema revision {SCHEMA_VERSION})")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the tool version and schema revision."),
    ] = None,
) -> None:
    """LLenergyMeasure: what LLM inference costs, in joules, seconds and tokens."""
    try:
        line = get_settings().stack_line()
    except ValueError:
        return  # bad settings: the command itself says which one and the fix
    if line:
        err.print(line, markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    try:
        cli()
    except Exception as exc:  # noqa: BLE001 - outages and OSError get one line with the fix; the rest re-raise
        _explain_outage(exc)
        raise


def _explain_outage(exc: Exception) -> None:
    """Exit with one line naming the fix when ``exc`` is a database or broker outage (imported only now). URLs,
    and whatever the error quotes, go through ``lem_shared.redact``: a password is never printed."""
    from kombu.exceptions import OperationalError as BrokerError
    from rich.markup import escape
    from sqlalchemy.exc import OperationalError as DatabaseError
    from sqlalchemy.exc import ProgrammingError as SchemaError

    from lem_shared.redact import redact

    settings = get_settings()
    database, broker = escape(redact(settings.database_url)), escape(redact(settings.broker_url))
    if isinstance(exc, DatabaseError):
        err.print(
            f"[bold red]error:[/] cannot use the database at {database}: "
            f"{escape(redact(str(exc.orig).strip().splitlines()[0]))}\n  start PostgreSQL (`make services`) "
            "and migrate it (`lem db upgrade`), or set LEM_DATABASE_URL",
            highlight=False,
        )
        sys.exit(EXIT_FAILED)
    if isinstance(exc, SchemaError):
        err.print(
            f"[bold red]error:[/] the database at {database} lacks the LLenergyMeasure schema or "
            f"has an old one ({escape(redact(str(exc.orig).strip().splitlines()[0]))}): run `lem db upgrade`",
            highlight=False,
        )
        sys.exit(EXIT_FAILED)
    if isinstance(exc, BrokerError):
        err.print(
            f"[bold red]error:[/] cannot reach the broker at {broker}: {escape(redact(str(exc)))}\n"
            "  start Redis (`make services`) or set LEM_BROKER_URL",
            highlight=False,
        )
        sys.exit(EXIT_FAILED)
    if isinstance(exc, OSError):  # a file that cannot be read or written: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(
            f"[bold red]error:[/] {escape(redact(where + (exc.strerror or str(exc))))}", highlight=False, soft_wrap=True
        )
        sys.exit(EXIT_FAILED)
