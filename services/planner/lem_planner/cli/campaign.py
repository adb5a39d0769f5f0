"""``lem campaign``: plan, validate, run, watch, resume, cancel and list campaigns."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lem_planner.cli.console import EXIT_BAD_INPUT, check_campaign_id, err, fail, no_campaign, out, print_json
from lem_planner.cli.tables import describe_experiments, results_table
from lem_shared.config.errors import ConfigError
from lem_shared.config.keys import flatten
from lem_shared.config.plan import CampaignPlan, load_plan
from lem_shared.config.schema import CampaignConfig, ExperimentConfig

campaign_cli = typer.Typer(help="Plan, run and list campaigns.", no_args_is_help=True)

_MAX_COLUMNS = 6  # `campaign plan`: more varying parameters than this are listed per row, not as columns


def _plan_or_exit(file: str) -> CampaignPlan:
    """The campaign's plan (experiments and skipped points), or exit 2 naming every bad field. Parameters are
    checked against the snapshot of the engine version the file pins or the live workers advertise; which one
    each backend used is printed on stderr."""
    from lem_planner.campaigns import advertised_engine_versions

    try:
        plan = load_plan(file, advertised_engine_versions())
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
        err.print(
            f"[yellow]warning:[/] {', '.join(remote)}: runs the model repository's own code on the worker; "
            "workers refuse it unless their host's operator set LEM_ALLOW_REMOTE_CODE=true",
            highlight=False,
            soft_wrap=True,
        )
    return plan


def _load_or_exit(file: str) -> tuple[CampaignConfig, list[ExperimentConfig]]:
    """The campaign and its experiments, or exit 2 naming every bad field (nothing is written); skipped grid
    points are printed as warnings."""
    plan = _plan_or_exit(file)
    if plan.skipped:
        err.print(f"[yellow]warning:[/] {len(plan.skipped)} grid point(s) skipped:", highlight=False)
        for skipped in plan.skipped[:10]:
            err.print(f"  {skipped.describe()}", highlight=False, markup=False, soft_wrap=True)
        if len(plan.skipped) > 10:
            err.print(
                f"  ... and {len(plan.skipped) - 10} more (`lem campaign plan {file}` lists them all)",
                highlight=False,
                markup=False,
            )
    return plan.campaign, plan.experiments


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
        table = Table(
            "exp",
            "backend",
            "parameters (those that differ between experiments)",
            title=f"{campaign.name}: experiments",
        )
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
    kinds = Counter(
        "excluded"
        if s.reason.startswith("excluded by ")
        else "duplicate"
        if s.reason.startswith("duplicate of ")
        else "invalid"
        for s in plan.skipped
    )
    out.print(
        f"{campaign.name}: {len(plan.experiments)} experiments ("
        + ", ".join(f"{n} {b}" for b, n in per_backend.items())
        + f"), {len(plan.skipped)} points skipped ("
        + ", ".join(f"{kinds[k]} {k}" for k in ("invalid", "excluded", "duplicate"))
        + f"); x "
        f"{campaign.cycles} cycles = {len(plan.experiments) * campaign.cycles} runs",
        highlight=False,
    )


@campaign_cli.command("run")
def campaign_run(
    file: Annotated[str, typer.Argument(help="Campaign YAML file.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Show progress until the campaign ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 6 * 3600,
    require_workers: Annotated[
        bool, typer.Option("--require-workers/--no-require-workers", help="Refuse when a backend has no worker.")
    ] = True,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print {campaign_id, name, status, experiments, cycles, "
            "runs, counts} as JSON (after the campaign ends with --wait).",
        ),
    ] = False,
) -> None:
    """Validate FILE, write its manifest, dispatch its runs; with --wait show progress, then the results."""
    from lem_planner.campaigns import gpu_shortfall, largest_live_gpu_sets, missing_workers, run_summary, start_campaign
    from lem_planner.sender import sender
    from lem_shared.db.models import CampaignStatus

    campaign, experiments = _load_or_exit(file)

    if require_workers:
        problem = missing_workers(sender(), experiments) or gpu_shortfall(experiments, largest_live_gpu_sets())
        if problem:
            raise fail(problem)

    campaign_id, requests = start_campaign(campaign, experiments)
    if as_json:
        status = _follow(campaign_id, len(requests), timeout, quiet=True) if wait else None
        print_json(run_summary(campaign_id, campaign.name, len(experiments), campaign.cycles))
        if status is not None and status != CampaignStatus.DONE:
            raise fail(f"campaign {campaign_id} ended {status}")
        return
    out.print(
        f"campaign [bold]{campaign_id}[/] ({campaign.name}): {len(experiments)} experiments x "
        f"{campaign.cycles} cycles = {len(requests)} runs, {campaign.structure}; each is sent when a "
        f"worker of its backend is free"
    )
    if not wait:
        return
    status = _follow(campaign_id, len(requests), timeout)
    results_table(campaign_id)
    if status != CampaignStatus.DONE:
        raise fail(f"campaign {campaign_id} ended {status}")


def _follow(campaign_id: int, total: int, timeout: float, quiet: bool = False) -> str:
    """Wait until the campaign ends (a progress bar unless ``quiet``); its final status."""
    from contextlib import nullcontext

    from lem_planner.campaigns import wait_for_campaign
    from lem_shared.db.models import TERMINAL_RUN_STATUSES

    progress = (
        None
        if quiet
        else Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
    )
    with progress or nullcontext():
        bar = None if progress is None else progress.add_task("runs", total=total)

        def show(status: str, counts: Counter[str]) -> None:
            if progress is not None and bar is not None:
                finished = sum(counts[s] for s in TERMINAL_RUN_STATUSES)
                detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                progress.update(bar, completed=finished, description=f"campaign {campaign_id}: {detail}")

        try:
            return wait_for_campaign(campaign_id, timeout, show)
        except TimeoutError as exc:
            raise fail(str(exc)) from None


@campaign_cli.command("status")
def campaign_status_command(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id (see `lem campaign list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The manifest of a campaign: progress, counts per status, an ETA and every run."""
    from lem_planner.campaigns import campaign_status

    try:
        status = campaign_status(check_campaign_id(campaign_id))
    except LookupError:
        raise no_campaign(campaign_id) from None
    if as_json:
        print_json(status)
        return
    eta = status["eta_s"]
    ended = status["status"] + (
        f" with {status['failed']} failed run{'s' if status['failed'] != 1 else ''}"
        if status["failed"] and status["status"] != "running"
        else ""
    )
    out.print(
        f"campaign [bold]{campaign_id}[/] ({status['name']}): {ended}, {status['structure']} "
        f"(seed {status['seed']}), {status['finished']}/{status['total']} runs finished"
        + (f", ETA {eta / 60:.1f} min" if eta else ""),
        highlight=False,
    )
    progress = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), console=out)
    for name, count in sorted(status["counts"].items()):
        progress.add_task(name, total=status["total"], completed=count)
    out.print(progress.get_renderable())
    table = Table("pos", "run", "exp", "backend", "cycle", "status", "attempts", "worker", "error")
    for r in status["runs"]:
        table.add_row(
            str(r["position"]),
            str(r["run_id"]),
            str(r["experiment_index"]),
            r["backend"],
            str(r["cycle"]),
            r["status"],
            str(r["attempts"]),
            r["worker"] or "",
            (r["error"] or "")[:60],
        )
    out.print(table)


@campaign_cli.command("resume")
def campaign_resume(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Show progress until the campaign ends.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 6 * 3600,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print {campaign_id, status, requeued, finished, total} "
            "as JSON (after the campaign ends with --wait).",
        ),
    ] = False,
) -> None:
    """Continue a campaign after a crash of the planner, a worker, Redis or PostgreSQL: runs in flight are
    sent again, finished runs are never re-run."""
    from lem_planner.campaigns import campaign_status, resume_campaign
    from lem_planner.sender import sender
    from lem_shared.db.models import CampaignStatus
    from lem_shared.dispatch import advance

    try:
        requeued = resume_campaign(check_campaign_id(campaign_id))
    except LookupError:
        raise no_campaign(campaign_id) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    advance(sender())  # the re-queued runs start now, as in `campaign run`
    status = campaign_status(campaign_id)
    if as_json:
        ended = (
            _follow(campaign_id, status["total"], timeout, quiet=True)
            if wait and status["status"] == CampaignStatus.RUNNING
            else None
        )
        final = campaign_status(campaign_id) if ended else status
        print_json(
            {
                "campaign_id": campaign_id,
                "status": str(final["status"]),
                "requeued": requeued,
                "finished": final["finished"],
                "total": final["total"],
            }
        )
        if ended is not None and ended != CampaignStatus.DONE:
            raise fail(f"campaign {campaign_id} ended {ended}")
        return
    out.print(
        f"campaign {campaign_id}: {requeued['dispatched']} dispatched and {requeued['running']} orphaned "
        f"runs re-queued; {status['finished']}/{status['total']} runs already finished"
    )
    if wait and status["status"] == CampaignStatus.RUNNING:
        ended = _follow(campaign_id, status["total"], timeout)
        results_table(campaign_id)
        if ended != CampaignStatus.DONE:
            raise fail(f"campaign {campaign_id} ended {ended}")


@campaign_cli.command("cancel")
def campaign_cancel(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print {campaign_id, cancelled, queued, stopping, orphaned, already} as JSON."),
    ] = False,
) -> None:
    """Drop the campaign's queued runs and stop its running one (its worker kills the engine within a second); a
    campaign that had already ended is left as it was (exit 0, saying so)."""
    from lem_planner.campaigns import cancel_campaign
    from lem_planner.sender import sender
    from lem_shared.wire.heartbeat import BeaconsAway

    try:
        counts = cancel_campaign(sender(), check_campaign_id(campaign_id))
    except LookupError:
        raise no_campaign(campaign_id) from None
    except BeaconsAway as exc:
        raise fail(f"cannot read the workers' heartbeats, nothing cancelled: {exc}") from None
    if as_json:
        print_json({"campaign_id": campaign_id, "cancelled": not counts["already"], **counts})
        return
    if counts["already"]:  # exit 0: the campaign is not running, which is what was asked
        out.print(f"campaign {campaign_id} had already ended ({counts['already']}): nothing cancelled")
        return
    parts = [f"{counts['queued']} queued runs dropped"]
    if counts["stopping"]:
        parts.append(
            f"{counts['stopping']} running run{' is' if counts['stopping'] == 1 else 's are'} being "
            "stopped by its worker"
        )
    if counts["orphaned"]:
        parts.append(
            f"{counts['orphaned']} running run{'' if counts['orphaned'] == 1 else 's'} that no worker "
            "was measuring any more cancelled"
        )
    out.print(f"campaign {campaign_id} cancelled: " + ", ".join(parts))


@campaign_cli.command("list")
def campaign_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List campaigns: id, name, status, created."""
    from lem_planner.results import list_campaigns

    rows = list_campaigns()
    if as_json:
        print_json(rows)
        return
    from lem_planner.campaigns import failed_runs_by_campaign

    failed_runs = failed_runs_by_campaign()
    table = Table("id", "name", "status", "created")
    for r in rows:
        failed = f", {failed_runs[r['id']]} failed" if r["id"] in failed_runs and r["status"] != "running" else ""
        table.add_row(str(r["id"]), r["name"], r["status"] + failed, r["created"])
    out.print(table)


@campaign_cli.command("validate")
def campaign_validate(
    file: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {campaign, experiments, cycles, runs, labels} as JSON.")
    ] = False,
) -> None:
    """Check FILE and print the experiments it expands to, without writing or dispatching anything."""
    campaign, experiments = _load_or_exit(file)
    if as_json:
        labels, _ = describe_experiments([e.model_dump(mode="json") for e in experiments])
        print_json(
            {
                "campaign": campaign.name,
                "experiments": len(experiments),
                "cycles": campaign.cycles,
                "runs": len(experiments) * campaign.cycles,
                "labels": labels,
            }
        )
        return
    labels, caption = describe_experiments([e.model_dump(mode="json") for e in experiments])
    out.print(f"{campaign.name}: {len(experiments)} experiments x {campaign.cycles} cycles; {caption}", highlight=False)
    for i, label in enumerate(labels):
        out.print(f"  {i}: {label}", highlight=False)
