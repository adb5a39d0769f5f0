"""``lem doctor``: the checks of ``lem_planner.doctor``, as a table with the fix for each one that failed."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from lem_planner.cli.console import EXIT_FAILED, out, print_json


def doctor_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check the broker, the database (and its schema), the workers per queue and the telemetry heartbeats."""
    from rich.table import Table

    from lem_planner.doctor import STYLE, run_checks
    from lem_planner.progress import Steps

    with Steps("checking the stack") as steps:
        checks, beats = run_checks(steps)
    ok = all(check.status != "fail" for check in checks)
    if as_json:
        print_json({"ok": ok, "checks": [asdict(c) for c in checks], "heartbeats": beats})
    else:
        table = Table(title="lem doctor")
        for column in ("check", "status", "detail"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, f"[{STYLE[check.status]}]{check.status}[/]", check.detail)
        out.print(table)
        for check in checks:
            if check.fix and check.status != "ok":
                out.print(f"[{STYLE[check.status]}]{check.name}:[/] {check.fix}", highlight=False)
        out.print("all needed services are up" if ok else "[bold red]something needed is down[/]")
    if not ok:
        raise typer.Exit(EXIT_FAILED)
