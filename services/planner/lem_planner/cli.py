"""The ``lem`` command: run and list campaigns, show results, migrate the database.

Heavy modules (SQLAlchemy, the models, Celery, redis) are imported inside the commands that use them, so
`lem campaign plan` and `lem --help` start in about a second.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lem_planner.bundle.cli import bundle_cli
from lem_planner.importer import results_import
from lem_planner.params.cli import params_cli
from lem_planner.report import results_report
from lem_planner.schedule_cli import schedule_cli
from lem_shared.config import CampaignConfig, CampaignPlan, ConfigError, ExperimentConfig, flatten, load_plan
from lem_shared.queues import QueueName, queue_for
from lem_shared.settings import get_settings

cli = typer.Typer(help="LLenergyMeasure: what LLM inference costs, in joules, seconds and tokens.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
campaign_cli = typer.Typer(help="Plan, run and list campaigns.", no_args_is_help=True)
results_cli = typer.Typer(help="Show results.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
energy_cli = typer.Typer(help="Energy analysis of recorded telemetry.", no_args_is_help=True)
cli.add_typer(campaign_cli, name="campaign")
cli.add_typer(results_cli, name="results")
cli.add_typer(db_cli, name="db")
cli.add_typer(energy_cli, name="energy")
cli.add_typer(params_cli, name="params")
cli.add_typer(bundle_cli, name="bundle")
cli.add_typer(schedule_cli, name="schedule")


def _version(value: bool) -> None:
    """``lem --version``: the tool version and the database schema revision it writes."""
    if value:
        from lem_shared import TOOL_VERSION
        from lem_shared.db.models import SCHEMA_VERSION

        typer.echo(f"{TOOL_VERSION} (database schema revision {SCHEMA_VERSION})")
        raise typer.Exit()


@cli.callback()
def _root(version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the tool version and schema revision.")] = None,
          ) -> None:
    """LLenergyMeasure: what LLM inference costs, in joules, seconds and tokens."""


@cli.command("doctor")
def doctor_command(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check the broker, the database (and its schema), the workers per queue and the telemetry heartbeats."""
    from lem_planner.doctor import doctor

    doctor(json=as_json)

# Piped output (make, CI logs) gets a fixed width wide enough for the results table instead of rich's 80.
# Not a terminal: 140 columns, unless COLUMNS says otherwise.
out = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=140)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=140)

EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one line (never wrapped, never read as markup: it may hold a path) and give the
    exit to raise."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _check_campaign_id(campaign_id: int) -> int:
    """``campaign_id``, or exit 2 when no campaign can have it (ids are PostgreSQL integers, 1 to 2^31 - 1):
    asking the database would fail with NumericValueOutOfRange."""
    from lem_planner.results import MAX_ID

    if not 1 <= campaign_id <= MAX_ID:
        raise _fail(f"no campaign {campaign_id} (campaign ids run from 1 to {MAX_ID}); `lem campaign list` shows "
                    "the ones there are", EXIT_BAD_INPUT)
    return campaign_id


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _plan_or_exit(file: str) -> CampaignPlan:
    """The campaign's plan (experiments and skipped points), or exit 2 naming every bad field. Parameters are
    checked against the snapshot of the engine version the file pins or the live workers advertise; which one
    each backend used is printed on stderr."""
    try:
        plan = load_plan(file, _advertised_engine_versions())
    except ConfigError as exc:
        err.print(f"[bold red]invalid campaign file {file}:[/]", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    for choice in plan.snapshots.values():
        err.print(choice.note, highlight=False, markup=False, soft_wrap=True)
        if choice.warning:
            err.print(f"[yellow]warning:[/] {choice.warning}", highlight=False, soft_wrap=True)
    remote = sorted({field for e in plan.experiments for field in e.section().remote_code_fields()})
    if remote:
        err.print(f"[yellow]warning:[/] {', '.join(remote)}: runs the model repository's own code on the worker; "
                  "workers refuse it unless their host's operator set LEM_ALLOW_REMOTE_CODE=true",
                  highlight=False, soft_wrap=True)
    return plan


def _advertised_engine_versions() -> dict[str, dict[str, str]]:
    """``{backend: {worker: engine version}}`` from the live workers' heartbeats; none when Redis cannot be
    reached (planning on a laptop)."""
    import redis

    from lem_shared.heartbeat import advertised_engine_versions, client, live_workers

    connection = client(get_settings().broker_url)
    try:
        return advertised_engine_versions(live_workers(connection))
    except redis.RedisError:
        return {}
    finally:
        connection.close()


def _load_or_exit(file: str) -> tuple[CampaignConfig, list[ExperimentConfig]]:
    """The campaign and its experiments, or exit 2 naming every bad field (nothing is written); skipped grid
    points are printed as warnings."""
    plan = _plan_or_exit(file)
    if plan.skipped:
        err.print(f"[yellow]warning:[/] {len(plan.skipped)} grid point(s) skipped:", highlight=False)
        for skipped in plan.skipped[:10]:
            err.print(f"  {skipped.describe()}", highlight=False, markup=False, soft_wrap=True)
        if len(plan.skipped) > 10:
            err.print(f"  ... and {len(plan.skipped) - 10} more (`lem campaign plan {file}` lists them all)",
                      highlight=False, markup=False)
    return plan.campaign, plan.experiments


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head",
               as_json: Annotated[bool, typer.Option("--json", help="Print {revision} as JSON.")] = False) -> None:
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
            fix = (f"create the database yourself (`createdb {name}`, as a user allowed to) or give LEM_DATABASE_URL "
                   "a user with CREATEDB, then run this again")
        else:
            fix = "start PostgreSQL (`make services`) or set LEM_DATABASE_URL to a server that runs"
        raise _fail(f"cannot migrate the database at {redact(url)}: {cause}; {fix}") from None
    if as_json:
        _print_json({"revision": revision})
        return
    out.print(f"database at revision {revision}")


@campaign_cli.command("plan")
def campaign_plan(
    file: Annotated[str, typer.Argument(help="Campaign YAML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print {campaign, experiments, skipped} as JSON.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Rows shown of experiments and of skipped points; 0: all.")] = 50,
) -> None:
    """Expand FILE per backend and print its experiments and the grid points skipped, with their reasons
    (invalid for the backend, excluded, duplicate). Writes and dispatches nothing."""
    plan = _plan_or_exit(file)
    if as_json:
        sys.stdout.write(plan.to_json() + "\n")
        return
    campaign, shown = plan.campaign, plan.experiments if limit == 0 else plan.experiments[:limit]
    flat = [flatten(e.model_dump(mode="json")) for e in shown]
    keys = dict.fromkeys(k for f in flat for k in f)  # a key only some experiments have (compile: {...})
    varying = [k for k in keys if k != "backend" and len({repr(f.get(k)) for f in flat}) > 1]
    if len(varying) <= _MAX_COLUMNS:
        table = Table("exp", "backend", *varying, title=f"{campaign.name}: experiments")
        for index, (experiment, values) in enumerate(zip(shown, flat, strict=True)):
            table.add_row(str(index), experiment.backend.value, *(str(values.get(k, "-")) for k in varying))
    else:  # too many to be columns: each row lists the parameters it sets (None: the engine's default)
        table = Table("exp", "backend", "parameters (those that differ between experiments)",
                      title=f"{campaign.name}: experiments")
        for index, (experiment, values) in enumerate(zip(shown, flat, strict=True)):
            settings = " ".join(f"{k}={values[k]}" for k in varying if values.get(k) is not None)
            table.add_row(str(index), experiment.backend.value, settings)
    out.print(table)
    if len(shown) < len(plan.experiments):
        out.print(f"... and {len(plan.experiments) - len(shown)} more experiments (--limit 0 shows all)")
    if plan.skipped:
        out.print(f"skipped {len(plan.skipped)} point(s):", highlight=False)
        for skipped in plan.skipped if limit == 0 else plan.skipped[:limit]:
            out.print(f"  {skipped.describe()}", highlight=False, markup=False, soft_wrap=True)
        if limit and len(plan.skipped) > limit:
            out.print(f"  ... and {len(plan.skipped) - limit} more (--limit 0 shows all)", highlight=False)
    per_backend = Counter(e.backend.value for e in plan.experiments)
    kinds = Counter("excluded" if s.reason.startswith("excluded by ") else
                    "duplicate" if s.reason.startswith("duplicate of ") else "invalid" for s in plan.skipped)
    out.print(f"{campaign.name}: {len(plan.experiments)} experiments ("
              + ", ".join(f"{n} {b}" for b, n in per_backend.items()) + f"), {len(plan.skipped)} points skipped ("
              + ", ".join(f"{kinds[k]} {k}" for k in ("invalid", "excluded", "duplicate")) + f"); x "
              f"{campaign.cycles} cycles = {len(plan.experiments) * campaign.cycles} runs", highlight=False)


@campaign_cli.command("run")
def campaign_run(
    file: Annotated[str, typer.Argument(help="Campaign YAML file.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Show progress until the campaign ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 6 * 3600,
    require_workers: Annotated[
        bool, typer.Option("--require-workers/--no-require-workers", help="Refuse when a backend has no worker.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print {campaign_id, name, status, experiments, cycles, "
                                                       "runs, counts} as JSON (after the campaign ends with --wait).")
                       ] = False,
) -> None:
    """Validate FILE, write its manifest, dispatch its runs; with --wait show progress, then the results."""
    from lem_planner.campaigns import consumers_by_queue, create_campaign
    from lem_planner.control import app
    from lem_shared.db.models import CampaignStatus
    from lem_shared.scheduling import advance

    campaign, experiments = _load_or_exit(file)

    if require_workers:
        consumers = consumers_by_queue(app)
        missing = sorted({e.backend.value for e in experiments if queue_for(e.backend).value not in consumers})
        if missing:
            hint = "; ".join(f"start one with `make up` or `lem-worker-{b}`" if b == "pytorch"
                             else f"start `lem-worker-{b}` on a host with {b} installed" for b in missing)
            raise _fail(f"no live worker for backend(s) {', '.join(missing)}: {hint} "
                        "(or pass --no-require-workers to queue the runs for later)")
        if QueueName.CONTROL.value not in consumers:
            raise _fail("no control worker (it dispatches runs in order and finalises their energy): start "
                        "`lem-control` or `make up` (or pass --no-require-workers to queue the runs for later)")

    campaign_id, requests = create_campaign(campaign, experiments)
    advance(app)
    if as_json:
        status = _follow(campaign_id, len(requests), timeout, quiet=True) if wait else None
        _print_json(_run_summary(campaign_id, campaign.name, len(experiments), campaign.cycles))
        if status is not None and status != CampaignStatus.DONE:
            raise _fail(f"campaign {campaign_id} ended {status}")
        return
    out.print(f"campaign [bold]{campaign_id}[/] ({campaign.name}): {len(experiments)} experiments x "
              f"{campaign.cycles} cycles = {len(requests)} runs, {campaign.structure}; each is sent when a "
              f"worker of its backend is free")
    if not wait:
        return
    status = _follow(campaign_id, len(requests), timeout)
    _results_table(campaign_id)
    if status != CampaignStatus.DONE:
        raise _fail(f"campaign {campaign_id} ended {status}")


def _run_summary(campaign_id: int, name: str, experiments: int, cycles: int) -> dict[str, Any]:
    """What ``campaign run --json`` prints: the campaign's id, status and run counts per status."""
    from lem_planner.results import campaign_progress

    status, counts = campaign_progress(campaign_id)
    return {"campaign_id": campaign_id, "name": name, "status": str(status), "experiments": experiments,
            "cycles": cycles, "runs": sum(counts.values()), "counts": {str(k): n for k, n in sorted(counts.items())}}


def _follow(campaign_id: int, total: int, timeout: float, quiet: bool = False) -> str:
    """Wait until the campaign ends (a progress bar unless ``quiet``); its final status."""
    from contextlib import nullcontext

    from lem_planner.results import campaign_progress
    from lem_shared.db.models import TERMINAL_RUN_STATUSES, CampaignStatus

    deadline = time.monotonic() + timeout
    progress = nullcontext() if quiet else Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=out, transient=False)
    with progress:
        bar = None if quiet else progress.add_task("runs", total=total)
        while True:
            status, counts = campaign_progress(campaign_id)
            if bar is not None:
                finished = sum(counts[s] for s in TERMINAL_RUN_STATUSES)
                detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                progress.update(bar, completed=finished, description=f"campaign {campaign_id}: {detail}")
            if status != CampaignStatus.RUNNING:
                return status
            if time.monotonic() > deadline:
                raise _fail(f"gave up waiting after {timeout:.0f} s; the campaign goes on: "
                            f"`lem results show {campaign_id}`")
            time.sleep(0.5)


_MAX_COLUMNS = 6


_LABEL_VALUE_CHARS = 24  # longer values are cut in labels and captions
_LABEL_KEYS = 5  # a label names at most this many of the keys that vary (the rest: `lem results show --json`)


def _key_value(key: str, value: Any) -> str:
    text = str(value)
    return f"{key}={text if len(text) <= _LABEL_VALUE_CHARS else text[:_LABEL_VALUE_CHARS - 1] + '…'}"


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part, or as many last parts as tell it from the others."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if not any(other != key and other.split(".")[-n:] == parts[-n:] for other in keys):
                break
        short[key] = name
    return short


def _describe_experiments(configs: list[dict[str, Any]]) -> tuple[list[str], str]:
    """A short label per experiment (the parameters that vary) and a caption (the ones all share); keys without
    a value are left out, and a value shown once is not repeated under another key (imported configurations
    hold model and backend twice)."""
    flat = [{k: v for k, v in flatten(c).items() if v is not None} for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    varying = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    short = _short_keys(keys)

    def text(f: dict[str, Any], names: list[str], most: int | None = None) -> str:
        parts, shown = [], set()
        for k in names:
            if k in f and repr(f[k]) not in shown:
                shown.add(repr(f[k]))
                parts.append(_key_value(short[k], f[k]))
        if most is not None and len(parts) > most:
            parts = [*parts[:most], f"(+{len(parts) - most} more)"]
        return " ".join(parts)

    labels = [text(f, varying, _LABEL_KEYS) or "(base)" for f in flat]
    common = [k for k in keys if k not in varying and all(k in f for f in flat)
              and k.split(".")[-1] not in ("kind", "seed")]
    return labels, text(flat[0], common) if flat else ""


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _metric_column(table: Table, header: str) -> None:
    """A figure column: never wrapped nor shrunk (labels and statuses give up the width instead)."""
    table.add_column(header, justify="right", no_wrap=True)


def _results_table(campaign_id: int, legend: bool = True) -> None:
    """A row per run; ``legend``: first the label of each experiment (``show`` gives them in its experiments
    table after)."""
    from lem_planner.results import j_per_token_text, run_records

    records = run_records(campaign_id)
    configs = {r["experiment_index"]: r["experiment"] for r in records}
    labels, caption = _describe_experiments([configs[i] for i in sorted(configs)])
    if legend:
        for index, label in zip(sorted(configs), labels, strict=True):
            out.print(f"exp {index}: {label}", highlight=False)
    table = Table(title=f"campaign {campaign_id}", caption=caption)
    table.add_column("exp", justify="right", no_wrap=True)
    table.add_column("cycle", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    for header in ("tokens\nper s", "latency\ns", "TTFT\ns", "energy\nJ", "energy\nper token"):
        _metric_column(table, header)
    for r in records:
        status = f"{r['status']}: {r['error']}" if r["error"] else r["status"]
        table.add_row(str(r["experiment_index"]), str(r["cycle"]),
                      f"{status} ({r['verdict']})" if r["verdict"] else status,
                      _fmt(r["tokens_per_s"], ".1f"), _fmt(r["latency_mean_s"], ".3f"),
                      _fmt(r["ttft_mean_s"], ".3f"),
                      _fmt(r["energy_j"], ".1f") if r["energy_j"] is not None or r["status"] != "done" else "n/a",
                      j_per_token_text(r["j_per_token"]) if r["status"] == "done" else "-")
    out.print(table)
    notes = {r["energy_note"] for r in records if r["energy_j"] is None and r["energy_note"]}
    for note in sorted(notes):
        out.print(f"energy: {note}", highlight=False)
    for line in run_notes(records):
        _print_wrapped(line)


_NOTE_WIDTH = 80


def _print_wrapped(text: str) -> None:
    """A note under a table, wrapped within 80 columns (or the terminal's, when narrower), later lines indented."""
    width = min(out.width, _NOTE_WIDTH)
    for line in textwrap.wrap(text, width=width, subsequent_indent="    ", break_on_hyphens=False) or [""]:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def run_notes(records: list[dict[str, Any]]) -> list[str]:
    """What the results table cannot say in a cell: why a run's verdict is not ``valid`` (each failed or warned
    check, with its message), and, for imported runs, the earlier tool's own tokens/s beside ours."""
    lines = [f"exp {r['experiment_index']} cycle {r['cycle']}: {c['status']}: {c['message']}"
             for r in records for c in r["checks"] or [] if c["status"] in ("fail", "warning")]
    theirs = [(r, r["imported_tokens_per_s"]) for r in records if r.get("imported_tokens_per_s")]
    if theirs:
        lines.append("tokens per s above: output tokens per second of the window (ours); the earlier tool's own "
                     "figure (avg_tokens_per_second) counts other tokens in some versions:")
        lines += [f"  exp {r['experiment_index']} cycle {r['cycle']}: {t['value']:.1f} tokens/s of {t['counts']}"
                  for r, t in theirs]
    return lines


@campaign_cli.command("status")
def campaign_status_command(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id (see `lem campaign list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The manifest of a campaign: progress, counts per status, an ETA and every run."""
    from lem_planner.campaigns import campaign_status

    _check_campaign_id(campaign_id)
    try:
        status = campaign_status(campaign_id)
    except LookupError as exc:
        raise _fail(f"{exc}; `lem campaign list` shows the ones there are", EXIT_BAD_INPUT) from None
    if as_json:
        _print_json(status)
        return
    eta = status["eta_s"]
    ended = status["status"] + (f" with {status['failed']} failed run{'s' if status['failed'] != 1 else ''}"
                                if status["failed"] and status["status"] != "running" else "")
    out.print(f"campaign [bold]{campaign_id}[/] ({status['name']}): {ended}, {status['structure']} "
              f"(seed {status['seed']}), {status['finished']}/{status['total']} runs finished"
              + (f", ETA {eta / 60:.1f} min" if eta else ""), highlight=False)
    progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), console=out)
    for name, count in sorted(status["counts"].items()):
        progress.add_task(name, total=status["total"], completed=count)
    out.print(progress.get_renderable())
    table = Table("pos", "run", "exp", "backend", "cycle", "status", "attempts", "worker", "error")
    for r in status["runs"]:
        table.add_row(str(r["position"]), str(r["run_id"]), str(r["experiment_index"]), r["backend"],
                      str(r["cycle"]), r["status"], str(r["attempts"]), r["worker"] or "", (r["error"] or "")[:60])
    out.print(table)


@campaign_cli.command("resume")
def campaign_resume(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Show progress until the campaign ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 6 * 3600,
    as_json: Annotated[bool, typer.Option("--json", help="Print {campaign_id, status, requeued, finished, total} "
                                                       "as JSON (after the campaign ends with --wait).")] = False,
) -> None:
    """Continue a campaign after a crash of the planner, a worker, Redis or PostgreSQL: runs in flight are
    sent again, finished runs are never re-run."""
    from lem_planner.campaigns import campaign_status, resume_campaign
    from lem_planner.control import app
    from lem_shared.db.models import CampaignStatus
    from lem_shared.scheduling import advance

    _check_campaign_id(campaign_id)
    try:
        requeued = resume_campaign(campaign_id)
    except LookupError as exc:
        raise _fail(f"{exc}; `lem campaign list` shows the ones there are", EXIT_BAD_INPUT) from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    advance(app)
    status = campaign_status(campaign_id)
    if as_json:
        ended = (_follow(campaign_id, status["total"], timeout, quiet=True)
                 if wait and status["status"] == CampaignStatus.RUNNING else None)
        final = campaign_status(campaign_id) if ended else status
        _print_json({"campaign_id": campaign_id, "status": str(final["status"]), "requeued": requeued,
                     "finished": final["finished"], "total": final["total"]})
        if ended is not None and ended != CampaignStatus.DONE:
            raise _fail(f"campaign {campaign_id} ended {ended}")
        return
    out.print(f"campaign {campaign_id}: {requeued['dispatched']} dispatched and {requeued['running']} orphaned "
              f"runs re-queued; {status['finished']}/{status['total']} runs already finished")
    if wait and status["status"] == CampaignStatus.RUNNING:
        ended = _follow(campaign_id, status["total"], timeout)
        _results_table(campaign_id)
        if ended != CampaignStatus.DONE:
            raise _fail(f"campaign {campaign_id} ended {ended}")


@campaign_cli.command("cancel")
def campaign_cancel(campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
                    as_json: Annotated[bool, typer.Option("--json", help="Print {campaign_id, cancelled, queued, "
                                                                       "stopping, orphaned, already} as JSON.")
                                       ] = False) -> None:
    """Drop the campaign's queued runs and stop its running one (its worker kills the engine within a second); a
    campaign that had already ended is left as it was (exit 0, saying so)."""
    import redis

    from lem_planner.campaigns import cancel_campaign
    from lem_planner.control import app

    _check_campaign_id(campaign_id)
    try:
        counts = cancel_campaign(app, campaign_id)
    except LookupError as exc:
        raise _fail(f"{exc}; `lem campaign list` shows the ones there are", EXIT_BAD_INPUT) from None
    except redis.RedisError as exc:
        raise _fail(f"cannot reach the broker, nothing cancelled: {exc}") from None
    if as_json:
        _print_json({"campaign_id": campaign_id, "cancelled": not counts["already"], **counts})
        return
    if counts["already"]:  # exit 0: the campaign is not running, which is what was asked
        out.print(f"campaign {campaign_id} had already ended ({counts['already']}): nothing cancelled")
        return
    parts = [f"{counts['queued']} queued runs dropped"]
    if counts["stopping"]:
        parts.append(f"{counts['stopping']} running run{' is' if counts['stopping'] == 1 else 's are'} being "
                     "stopped by its worker")
    if counts["orphaned"]:
        parts.append(f"{counts['orphaned']} running run{'' if counts['orphaned'] == 1 else 's'} that no worker "
                     "was measuring any more cancelled")
    out.print(f"campaign {campaign_id} cancelled: " + ", ".join(parts))


@campaign_cli.command("list")
def campaign_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List campaigns: id, name, status, created."""
    from lem_planner.results import list_campaigns

    rows = list_campaigns()
    if as_json:
        _print_json(rows)
        return
    from lem_planner.campaigns import failed_runs_by_campaign

    failed_runs = failed_runs_by_campaign()
    table = Table("id", "name", "status", "created")
    for r in rows:
        failed = f", {failed_runs[r['id']]} failed" if r["id"] in failed_runs and r["status"] != "running" else ""
        table.add_row(str(r["id"]), r["name"], r["status"] + failed, r["created"])
    out.print(table)


@campaign_cli.command("validate")
def campaign_validate(file: str, as_json: Annotated[bool, typer.Option(
        "--json", help="Print {campaign, experiments, cycles, runs, labels} as JSON.")] = False) -> None:
    """Check FILE and print the experiments it expands to, without writing or dispatching anything."""
    campaign, experiments = _load_or_exit(file)
    if as_json:
        labels, _ = _describe_experiments([e.model_dump(mode="json") for e in experiments])
        _print_json({"campaign": campaign.name, "experiments": len(experiments), "cycles": campaign.cycles,
                     "runs": len(experiments) * campaign.cycles, "labels": labels})
        return
    labels, caption = _describe_experiments([e.model_dump(mode="json") for e in experiments])
    out.print(f"{campaign.name}: {len(experiments)} experiments x {campaign.cycles} cycles; {caption}", highlight=False)
    for i, label in enumerate(labels):
        out.print(f"  {i}: {label}", highlight=False)


def _ci_cell(metric: dict[str, Any], spec: str, scale: float = 1.0) -> str:
    """A mean with its interval below it, one end a line, so figure columns stay narrow."""
    if metric["mean"] is None:
        return "n/a"
    mean = format(metric["mean"] * scale, spec)
    if metric["ci_low"] is None or metric["ci_high"] is None:
        return f"{mean}\n(no CI)"
    return f"{mean}\n[{metric['ci_low'] * scale:{spec}},\n{metric['ci_high'] * scale:{spec}}]"


def _experiments_table(campaign_id: int, summaries: list[dict[str, Any]]) -> None:
    if not summaries:
        return
    from lem_planner.results import j_per_token_text, summary_notes

    labels, _ = _describe_experiments([e["experiment"] for e in summaries])
    ci = summaries[0]["ci"]
    table = Table(title=f"campaign {campaign_id}: mean [{ci['confidence']:.0%} CI] across done cycles",
                  caption=f"{ci['method']}, {ci['resamples']:,} resamples, seed {ci['seed']}")
    table.add_column("exp", justify="right", no_wrap=True)
    table.add_column("experiment", overflow="fold")
    table.add_column("done", justify="right", no_wrap=True)
    for header in ("tokens\nper s", "energy\nper token", "energy\nJ", "TTFT\ns", "ITL\nms"):
        _metric_column(table, header)
    for label, e in zip(labels, summaries, strict=True):
        m = e["metrics"]
        per_token = m["j_per_token"]
        table.add_row(str(e["experiment_index"]), label, f"{e['runs_done']}/{e['runs']}",
                      _ci_cell(m["tokens_per_s"], ".1f"),
                      j_per_token_text(per_token["mean"], per_token["ci_low"], per_token["ci_high"], sep="\n"),
                      _ci_cell(m["energy_j"], ".1f"), _ci_cell(m["ttft_mean_s"], ".3f"),
                      _ci_cell(m["itl_mean_s"], ".2f", 1000))
    out.print(table)
    for e in summaries:
        for line in summary_notes(e):
            out.print(f"exp {e['experiment_index']}: {line}", highlight=False)


@results_cli.command("show")
def results_show(
    campaign_id: int,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    experiments: Annotated[bool, typer.Option(
        "--experiments", help="With --json: print {runs, experiments} (per-experiment means and CIs) instead of "
        "the list of runs.")] = False,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples for the CIs.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
) -> None:
    """The runs of CAMPAIGN_ID (config, cycle, status, tokens/s, latency, TTFT, energy), then per experiment the
    mean across its done cycles with a 95 % percentile-bootstrap CI (none under 2 cycles, a warning under 3)."""
    from lem_planner.results import campaign_exists, experiment_summaries, run_records

    if not campaign_exists(_check_campaign_id(campaign_id)):
        raise _fail(f"no campaign {campaign_id}; `lem campaign list` shows the ones there are", EXIT_BAD_INPUT)
    if as_json and not experiments:
        _print_json(run_records(campaign_id))
        return
    records = run_records(campaign_id)
    summaries = experiment_summaries(campaign_id, resamples=resamples, seed=seed, records=records)
    if as_json:
        _print_json({"campaign_id": campaign_id, "runs": records, "experiments": summaries})
    else:
        _results_table(campaign_id, legend=False)
        _experiments_table(campaign_id, summaries)


class ExportFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"
    json = "json"


class ExportLevel(StrEnum):
    run = "run"
    experiment = "experiment"


@results_cli.command("export")
def results_export(
    campaign_id: int,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    fmt: Annotated[ExportFormat | None, typer.Option(
        "--format", help="csv, parquet or json (a list of records); by default the one the file's suffix names "
        "(.csv, .parquet, .json).")] = None,
    level: Annotated[ExportLevel, typer.Option(help="run: a row per run; experiment: a row per experiment with "
                                                    "means and 95 % bootstrap CIs.")] = ExportLevel.run,
) -> None:
    """Write CAMPAIGN_ID's results to a file pandas reads as it is (`lem results columns` documents each
    column: name, unit, type, meaning). The format is --format or the file's suffix; a --format the suffix
    contradicts is refused (exit 2). The file appears whole or not at all: a failed write (exit 1) leaves what
    was there; a target that is not a regular file, or in a folder that does not exist, is refused (exit 2)."""
    from lem_planner.export import FormatError, export, format_for
    from lem_planner.results import campaign_exists
    from lem_planner.safe_write import OutputError, check_target

    try:
        written_as = format_for(output, fmt.value if fmt else None)
        check_target(output)
        if not campaign_exists(_check_campaign_id(campaign_id)):
            raise _fail(f"no campaign {campaign_id}; `lem campaign list` shows the ones there are", EXIT_BAD_INPUT)
        rows = export(campaign_id, output, written_as, level.value)
    except FormatError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None
    except OutputError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    out.print(f"{rows} {level.value} rows of campaign {campaign_id} -> {output} ({written_as})", highlight=False)


# Their modules import only typer and rich until the command runs.
results_cli.command("import")(results_import)
results_cli.command("report")(results_report)


@results_cli.command("columns")
def results_columns(
    level: Annotated[ExportLevel, typer.Option(help="Columns of the run or the experiment export.")] =
    ExportLevel.run,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every column of `lem results export`: name, unit, type (int, float, bool, text, timestamp: Parquet's
    schema, the same for every campaign), meaning."""
    from dataclasses import asdict

    from lem_planner.export import COLUMNS, CONFIG_COLUMN

    columns = [*COLUMNS[level.value], CONFIG_COLUMN]
    if as_json:
        _print_json([asdict(c) for c in columns])
        return
    table = Table("column", "unit", "type", "meaning", title=f"lem results export --level {level.value}")
    for c in columns:
        table.add_row(c.name, c.unit, c.type, c.meaning)
    out.print(table)


@results_cli.command("compare")
def results_compare(
    a: Annotated[str, typer.Argument(help="A campaign (12) or an experiment (12:3).")],
    b: Annotated[str, typer.Argument(help="The same kind: B is compared with A.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples for the CIs.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
) -> None:
    """A and B side by side per metric: means with 95 % CIs, B's difference from A in %, and whether the CIs
    overlap (campaigns: experiments of the same config are paired, the rest by position)."""
    from lem_planner.compare import CompareError, compare
    from lem_planner.results import j_per_token_text
    from lem_shared.stats import ci_text

    try:
        comparison = compare(a, b, resamples=resamples, seed=seed)
    except CompareError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None
    if as_json:
        _print_json({"rows": comparison.rows, "unpaired": comparison.unpaired, "notes": comparison.notes})
        return
    table = Table("A", "B", "metric", "A mean [95 % CI]", "B mean [95 % CI]", "B vs A", "CIs overlap",
                  title=f"lem results compare {a} {b}")
    for r in comparison.rows:
        if r["metric"] == "j_per_token":
            means = [j_per_token_text(r[f"{side}_mean"], r[f"{side}_ci_low"], r[f"{side}_ci_high"])
                     for side in ("a", "b")]
        else:
            scale = 1000 if r["metric"] == "itl_mean_s" else 1
            means = [ci_text({"mean": r[f"{side}_mean"], "ci_low": r[f"{side}_ci_low"],
                              "ci_high": r[f"{side}_ci_high"]}, ".4g", scale) for side in ("a", "b")]
        if r["ci_overlap"] is None:
            overlap = f"- ({r['a_reason'] or r['b_reason']})"
        else:
            overlap = "yes (not shown to differ)" if r["ci_overlap"] else "no"
            if r["a_warning"] or r["b_warning"]:
                overlap += " (unreliable: under 3 cycles)"
        table.add_row(r["a"], r["b"], r["metric"] + (" ms" if r["metric"] == "itl_mean_s" else ""), *means,
                      _fmt(r["diff_pct"], "+.1f") + (" %" if r["diff_pct"] is not None else ""), overlap)
    out.print(table)
    for experiment, notes in comparison.notes.items():
        for line in notes:
            out.print(f"{experiment}: {line}", highlight=False)
    if comparison.unpaired:
        out.print(f"without a partner, not compared: {', '.join(comparison.unpaired)}", highlight=False)
    if any(r["paired"] == "by position" for r in comparison.rows):
        out.print("some experiments differ in config and were paired by position", highlight=False)


@energy_cli.command("analyse")
def energy_analyse(
    trace: Annotated[str, typer.Option(help="Telemetry JSONL: t, power_mw, energy_mj[, temp_c, sm_mhz, reasons].")],
    windows: Annotated[str, typer.Option(help='Windows JSONL: {"name", "start", "end"} (Unix seconds).')],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    min_window_s: Annotated[float, typer.Option(help="Windows shorter than this get a warning.")] = 10.0,
    interval_s: Annotated[float | None, typer.Option(help="Sampling interval; inferred when absent.")] = None,
) -> None:
    """Energy, power, clock-event shares and validity checks per window — the finaliser's own analysis."""
    from lem_shared.analysis import RunContext, Thresholds, analyse_window
    from lem_shared.trace import TraceError, read_trace, read_windows

    try:
        samples, spans = read_trace(trace), read_windows(windows)
    except TraceError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None
    limits = Thresholds(min_window_s=min_window_s)
    results = [analyse_window(samples, start, end, name=name, context=RunContext(interval_s=interval_s),
                              thresholds=limits).to_dict() for name, start, end in spans]
    if as_json:
        _print_json(results)
        return
    table = Table("window", "s", "counter J", "∫P dt J", "P", "gap %", "mean W", "peak W", "updates", "verdict")
    for r in results:
        table.add_row(r["name"], f"{r['duration_s']:.2f}", _fmt(r["energy_counter_j"], ".1f"),
                      _fmt(r["energy_integral_j"], ".1f"), {"instant": "inst", "average": "avg"}.get(
                          r["power_source"], "-"), _fmt(r["disagreement_pct"], "+.2f"),
                      _fmt(r["mean_power_w"], ".0f"), _fmt(r["peak_power_w"], ".0f"), str(r["counter_updates"]),
                      r["verdict"])
    out.print(table)
    for r in results:
        for check in r["checks"]:
            if check["status"] in ("warning", "fail"):
                out.print(f"{r['name']}: {check['status']}: {check['name']}: {check['message']}", highlight=False)


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
        err.print(f"[bold red]error:[/] cannot use the database at {database}: "
                  f"{escape(redact(str(exc.orig).strip().splitlines()[0]))}\n  start PostgreSQL (`make services`) "
                  "and migrate it (`lem db upgrade`), or set LEM_DATABASE_URL", highlight=False)
        sys.exit(1)
    if isinstance(exc, SchemaError):
        err.print(f"[bold red]error:[/] the database at {database} lacks the LLenergyMeasure schema or "
                  f"has an old one ({escape(redact(str(exc.orig).strip().splitlines()[0]))}): run `lem db upgrade`",
                  highlight=False)
        sys.exit(1)
    if isinstance(exc, BrokerError):
        err.print(f"[bold red]error:[/] cannot reach the broker at {broker}: {escape(redact(str(exc)))}\n"
                  "  start Redis (`make services`) or set LEM_BROKER_URL", highlight=False)
        sys.exit(1)
    if isinstance(exc, OSError):  # a file that cannot be read or written: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[bold red]error:[/] {escape(redact(where + (exc.strerror or str(exc))))}", highlight=False,
                  soft_wrap=True)
        sys.exit(1)
