"""``lem schedule``: campaigns on a schedule (add, list, history, pause, resume, remove). The beat process
(`lem-beat`, `make beat`) fires them; the database and Celery are imported inside the commands so `lem --help`
stays fast."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from lem_planner.cli.console import EXIT_BAD_INPUT, fail, print_json, stdout_console
from lem_planner.schedules import DEFAULT_CATCH_UP, ScheduleOverlap

schedule_cli = typer.Typer(
    help="Campaigns on a schedule, fired by the beat process (`make beat` or `make up`).", no_args_is_help=True
)


def _beat_line() -> str:
    from lem_planner.schedules import beat_presence

    try:
        beat = beat_presence()
    except Exception as exc:  # noqa: BLE001 - the broker is only needed for this line
        return f"beat: unknown (the broker does not answer: {type(exc).__name__})"
    if beat is None:
        return "beat: not running; nothing fires until one runs: `make beat` (foreground) or `make up`"
    return f"beat: running on {beat['host']} (pid {beat['pid']}), last tick {beat['age_s']:.0f} s ago"


@schedule_cli.command("add")
def schedule_add(
    file: Annotated[str, typer.Argument(help="Campaign YAML file; its content is stored with the schedule.")],
    cron: Annotated[str | None, typer.Option(help="Cron expression, e.g. '0 2 * * *' (02:00 every day).")] = None,
    every: Annotated[
        str | None,
        typer.Option(help="Interval: 30s, 15m, 6h, 1d, 1h30m. The first firing is one interval from now, or --at."),
    ] = None,
    at: Annotated[str | None, typer.Option(help="ISO time: fire once then (with --every: the first firing).")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time: no firing after it.")] = None,
    times: Annotated[int | None, typer.Option(help="Fire at most this many times.")] = None,
    overlap: Annotated[
        ScheduleOverlap,
        typer.Option(
            help="When a campaign still runs on the backends this one needs: queue (create it; its runs follow) "
            "or skip (record the skip)."
        ),
    ] = ScheduleOverlap.QUEUE,
    catch_up: Annotated[
        int,
        typer.Option(
            min=0,
            help="Due times missed while no beat ran that are fired late when "
            "one comes back (the most recent ones); older are recorded "
            "as missed.",
        ),
    ] = DEFAULT_CATCH_UP,
    tz: Annotated[
        str, typer.Option("--tz", help="Time zone of --cron, and of --at/--until without an offset.")
    ] = "UTC",
    as_json: Annotated[bool, typer.Option("--json", help="Print the schedule as JSON.")] = False,
) -> None:
    """Run the campaign in FILE on a schedule. The file is validated now and its text stored: editing the file
    later does not change what the schedule runs (remove and add it again)."""
    from lem_planner.schedules import ScheduleError, add_schedule, build_timing
    from lem_shared.config.errors import ConfigError

    # One "now" for the command: the first due time of --every is one interval after it, and validating the file
    # (seconds on a loaded machine) must not move it past that.
    now = datetime.now(UTC)
    try:
        timing = build_timing(cron=cron, every=every, at=at, until=until, times=times, tz=tz, now=now)
    except ScheduleError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    try:
        summary = add_schedule(file, timing, overlap.value, catch_up, now=now)
    except ConfigError as exc:
        typer.echo(f"error: invalid campaign file {file}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"schedule {summary['id']} ({summary['name']}): {summary['when']}; next {summary['next_due_at']}; "
        f"overlap {summary['overlap']}"
    )
    typer.echo(_beat_line())


@schedule_cli.command("list")
def schedule_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Schedules: when, next due time, firings so far by outcome, overlap policy, status; and whether beat runs."""
    from rich.table import Table

    from lem_planner.schedules import list_schedules

    rows = list_schedules()
    if as_json:
        print_json(rows)
        return
    table = Table("id", "campaign", "when", "next", "fired", "overlap", "status", "last firing")
    for r in rows:
        last = r["last_firing"]
        last_text = (
            "-"
            if last is None
            else f"{last['due_at']} {last['outcome']}"
            + (f" campaign {last['campaign_id']}" if last["campaign_id"] else "")
        )
        fired = ", ".join(f"{n} {k}" for k, n in sorted(r["outcomes"].items())) or "0"
        table.add_row(
            str(r["id"]), r["name"], r["when"], r["next_due_at"] or "-", fired, r["overlap"], r["status"], last_text
        )
    console = stdout_console(piped_width=160)
    console.print(table)
    console.print(_beat_line(), highlight=False)


@schedule_cli.command("history")
def schedule_history_command(
    schedule_id: Annotated[int, typer.Argument(help="Schedule id (see `lem schedule list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every firing of a schedule: due time, when it fired, outcome, campaign, the overlap policy then, detail."""
    from rich.table import Table

    from lem_planner.schedules import schedule_history

    try:
        firings = schedule_history(schedule_id)
    except LookupError as exc:
        raise fail(f"{exc}; `lem schedule list` shows the ones there are", EXIT_BAD_INPUT) from None
    if as_json:
        print_json(firings)
        return
    table = Table("due", "fired", "outcome", "campaign", "overlap", "detail")
    for f in firings:
        table.add_row(
            f["due_at"], f["fired_at"], f["outcome"], str(f["campaign_id"] or "-"), f["overlap"], f["detail"] or ""
        )
    stdout_console(piped_width=160).print(table)


def _by_id(action: str, schedule_id: int) -> dict[str, Any] | None:
    from lem_planner.schedules import remove_schedule, set_paused

    try:
        if action == "remove":
            remove_schedule(schedule_id)
            return None
        return set_paused(schedule_id, paused=action == "pause")
    except LookupError as exc:
        raise fail(f"{exc}; `lem schedule list` shows the ones there are", EXIT_BAD_INPUT) from None


@schedule_cli.command("remove")
def schedule_remove(
    schedule_id: Annotated[int, typer.Argument(help="Schedule id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete a schedule and its firing record; the campaigns it created stay."""
    _by_id("remove", schedule_id)
    if as_json:
        print_json({"schedule_id": schedule_id, "removed": True})
        return
    typer.echo(f"schedule {schedule_id} removed")


@schedule_cli.command("pause")
def schedule_pause(
    schedule_id: Annotated[int, typer.Argument(help="Schedule id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Stop firing until `lem schedule resume`; due times in the pause are not fired later."""
    summary = _by_id("pause", schedule_id)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"schedule {schedule_id} paused")


@schedule_cli.command("resume")
def schedule_resume(
    schedule_id: Annotated[int, typer.Argument(help="Schedule id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fire again, from the first due time after now."""
    summary = _by_id("resume", schedule_id)
    assert summary is not None
    if as_json:
        print_json(summary)
        return
    typer.echo(f"schedule {schedule_id} resumed; next {summary['next_due_at'] or '- (no more due times)'}")
