"""What every ``lem`` command prints through: the stdout and stderr consoles, the exit codes, the one-line error
(``fail``), JSON output, and the one answer to a campaign id that names nothing."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.console import Console

EXIT_FAILED = 1  # something needed failed: a service, a write, a campaign that ended badly
EXIT_BAD_INPUT = 2  # the command's input is wrong: fixing it is the user's to do


def stdout_console(piped_width: int = 140) -> Console:
    """A console on stdout: the terminal's width, or, piped (make, CI logs), ``piped_width`` columns (wide
    enough for the tables instead of rich's 80) unless COLUMNS says otherwise."""
    return Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=piped_width)


out = stdout_console()
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=140)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``message`` as one ``error:`` line on stderr (never wrapped, never read as markup or emoji codes:
    it may hold a path) and give the exit to raise."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)
    return typer.Exit(code)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def no_campaign(campaign_id: int, why: str = "") -> typer.Exit:
    """The exit (2) for a campaign id that names no campaign, saying where the ones there are are listed."""
    return fail(f"no campaign {campaign_id}{why}; `lem campaign list` shows the ones there are", EXIT_BAD_INPUT)


def check_campaign_id(campaign_id: int) -> int:
    """``campaign_id``, or exit 2 when no campaign can have it (ids are PostgreSQL integers, 1 to 2^31 - 1):
    asking the database would fail with NumericValueOutOfRange."""
    from lem_planner.results import MAX_ID

    if not 1 <= campaign_id <= MAX_ID:
        raise no_campaign(campaign_id, f" (campaign ids run from 1 to {MAX_ID})")
    return campaign_id


def existing_campaign(campaign_id: int) -> int:
    """``campaign_id`` when it names a campaign, else exit 2 (``check_campaign_id`` first)."""
    from lem_planner.results import campaign_exists

    if not campaign_exists(check_campaign_id(campaign_id)):
        raise no_campaign(campaign_id)
    return campaign_id
