"""``lem results``: show, export, import, report and compare results, and the export's columns."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lem_planner.cli.console import (
    EXIT_BAD_INPUT,
    check_campaign_id,
    existing_campaign,
    fail,
    no_campaign,
    out,
    print_json,
)
from lem_planner.cli.tables import cell, experiments_table, results_table

results_cli = typer.Typer(help="Show results.", no_args_is_help=True)


@results_cli.command("show")
def results_show(
    campaign_id: int,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    experiments: Annotated[
        bool,
        typer.Option(
            "--experiments",
            help="With --json: print {runs, experiments} (per-experiment means and CIs) instead of the list of runs.",
        ),
    ] = False,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples for the CIs.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
) -> None:
    """The runs of CAMPAIGN_ID (config, cycle, status, tokens/s, latency, TTFT, energy), then per experiment the
    mean across its done cycles with a 95 % percentile-bootstrap CI (none under 2 cycles, a warning under 3)."""
    from lem_planner.results import experiment_summaries, run_records

    existing_campaign(campaign_id)
    if as_json and not experiments:
        print_json(run_records(campaign_id))
        return
    records = run_records(campaign_id)
    summaries = experiment_summaries(campaign_id, resamples=resamples, seed=seed, records=records)
    if as_json:
        print_json({"campaign_id": campaign_id, "runs": records, "experiments": summaries})
    else:
        results_table(campaign_id, legend=False)
        experiments_table(campaign_id, summaries)


class ExportFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"
    json = "json"


class ExportLevel(StrEnum):
    run = "run"
    experiment = "experiment"
    request = "request"


@results_cli.command("export")
def results_export(
    campaign_id: int,
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="csv, parquet or json (a list of records); by default the one the file's suffix names "
            "(.csv, .parquet, .json).",
        ),
    ] = None,
    level: Annotated[
        ExportLevel,
        typer.Option(
            help="run: a row per run; experiment: a row per experiment with means and 95 % bootstrap CIs; "
            "request: a row per served request of the serving runs (times, tokens, TTFT, TPOT, E2E, energy)."
        ),
    ] = ExportLevel.run,
) -> None:
    """Write CAMPAIGN_ID's results to a file pandas reads as it is (`lem results columns` documents each
    column: name, unit, type, meaning). The format is --format or the file's suffix; a --format the suffix
    contradicts is refused (exit 2). The file appears whole or not at all: a failed write (exit 1) leaves what
    was there; a target that is not a regular file, or in a folder that does not exist, is refused (exit 2)."""
    from lem_planner.export import FormatError, export, format_for
    from lem_planner.safe_write import OutputError, check_target

    try:
        written_as = format_for(output, fmt.value if fmt else None)
        check_target(output)
        rows = export(existing_campaign(campaign_id), output, written_as, level.value)
    except FormatError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except OutputError as exc:
        raise fail(str(exc), exc.exit_code) from None
    out.print(f"{rows} {level.value} rows of campaign {campaign_id} -> {output} ({written_as})", highlight=False)
    if level is ExportLevel.request and not rows:
        # As the other levels on a campaign without rows: the file has the columns, exit 0; but say why it is empty.
        typer.echo(
            f"note: campaign {campaign_id} has no served requests (no run with workload.mode: serving has stored "
            "its requests), so the file has the columns and no rows",
            err=True,
        )


@results_cli.command("import")
def results_import(
    directory: Annotated[Path, typer.Argument(help="Folder of the earlier tool's results (searched recursively).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {campaign_id, runs, imported, skipped, problems} as JSON.")
    ] = False,
) -> None:
    """Import the JSON results of the earlier LLenergyMeasure (v2 and v3, per-process and aggregated) as a
    campaign marked imported; fields without a column here are kept in runs.imported. Bad or partial files are
    reported and skipped; importing a folder again adds only what is new."""
    from lem_planner.importer import ALREADY, import_results

    if not directory.is_dir():
        raise fail(f"{directory}: no such directory", EXIT_BAD_INPUT)
    report = import_results(directory)
    if not report.imported and not report.skipped:
        raise fail(f"{directory}: no .json files", EXIT_BAD_INPUT)
    if as_json:
        print_json(
            {
                "campaign_id": report.campaign_id,
                "directory": str(report.directory),
                "runs": report.runs,
                "imported": [str(file) for file, _, _ in report.imported],
                "skipped": [{"file": str(file), "reason": reason} for file, reason in report.skipped],
                "problems": len(report.problems),
            }
        )
        for file, reason in report.problems:
            typer.echo(f"error: {file}: {reason}", err=True)
        if report.problems:
            raise typer.Exit(1)
        return
    for file, _, _ in report.imported:
        out.print(f"imported {file}", highlight=False, markup=False, soft_wrap=True)
    for file, reason in report.skipped:
        out.print(f"skipped {file}: {reason}", highlight=False, markup=False, soft_wrap=True)
    already = sum(1 for _, r in report.skipped if r.startswith(ALREADY))
    where = f"campaign {report.campaign_id}" if report.campaign_id is not None else "no campaign"
    out.print(
        f"{report.runs} run(s) imported into {where} ({report.directory}); {len(report.skipped)} file(s) "
        f"skipped: {len(report.problems)} bad, {already} already imported"
        + (f"; `lem results show {report.campaign_id}`" if report.campaign_id is not None else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if report.problems:
        raise typer.Exit(1)


@results_cli.command("report")
def results_report(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write (its folder must exist).")],
    figures: Annotated[
        Path | None,
        typer.Option(
            "--figures",
            help="The folder for the figure files (PNG and SVG; made if missing, its parent must exist); "
            "default: <output stem>_figures beside the page.",
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML report of CAMPAIGN_ID with every figure its data supports: power and
    temperature over time with the measurement windows shaded; throughput, TTFT, latency and J/token against the
    swept parameter with 95 % CIs per backend; Pareto fronts of J/token against throughput and latency; prefill
    against decode (measurement.phase_split); idle against active energy; the validity of every run. Each figure
    is also written as PNG and SVG into the --figures folder. Files appear whole or not at all: a failed write
    (exit 1) leaves what was there; a target that is not a regular file, or in a folder that does not exist, is
    refused (exit 2)."""
    from lem_planner.report import UnknownCampaign, figures_folder, render_report
    from lem_planner.safe_write import OutputError, check_target

    try:
        check_target(output)
        render_report(check_campaign_id(campaign_id), output, figures)
    except OutputError as exc:
        raise fail(str(exc), exc.exit_code) from None
    except UnknownCampaign:
        raise no_campaign(campaign_id) from None
    folder = figures or figures_folder(output)
    out.print(
        f"wrote {output} ({output.stat().st_size / 1024:.0f} KiB) and its figures in {folder}",
        highlight=False,
        markup=False,
    )


@results_cli.command("columns")
def results_columns(
    level: Annotated[
        ExportLevel, typer.Option(help="Columns of the run, the experiment or the request export.")
    ] = ExportLevel.run,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every column of `lem results export`: name, unit, type (int, float, bool, text, timestamp: Parquet's
    schema, the same for every campaign), meaning."""
    from dataclasses import asdict

    from lem_planner.export import COLUMNS, CONFIG_COLUMN

    columns = [*COLUMNS[level.value], CONFIG_COLUMN]
    if as_json:
        print_json([asdict(c) for c in columns])
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
    from lem_shared.measure.stats import ci_text

    try:
        comparison = compare(a, b, resamples=resamples, seed=seed)
    except CompareError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    if as_json:
        print_json({"rows": comparison.rows, "unpaired": comparison.unpaired, "notes": comparison.notes})
        return
    table = Table(
        "A",
        "B",
        "metric",
        "A mean [95 % CI]",
        "B mean [95 % CI]",
        "B vs A",
        "CIs overlap",
        title=f"lem results compare {a} {b}",
    )
    for r in comparison.rows:
        if r["metric"] == "j_per_token":
            means = [
                j_per_token_text(r[f"{side}_mean"], r[f"{side}_ci_low"], r[f"{side}_ci_high"]) for side in ("a", "b")
            ]
        else:
            scale = 1000 if r["metric"] == "itl_mean_s" else 1
            means = [
                ci_text(
                    {"mean": r[f"{side}_mean"], "ci_low": r[f"{side}_ci_low"], "ci_high": r[f"{side}_ci_high"]},
                    ".4g",
                    scale,
                )
                for side in ("a", "b")
            ]
        if r["ci_overlap"] is None:
            overlap = f"- ({r['a_reason'] or r['b_reason']})"
        else:
            overlap = "yes (not shown to differ)" if r["ci_overlap"] else "no"
            if r["a_warning"] or r["b_warning"]:
                overlap += " (unreliable: under 3 cycles)"
        table.add_row(
            r["a"],
            r["b"],
            r["metric"] + (" ms" if r["metric"] == "itl_mean_s" else ""),
            *means,
            cell(r["diff_pct"], "+.1f") + (" %" if r["diff_pct"] is not None else ""),
            overlap,
        )
    out.print(table)
    for experiment, notes in comparison.notes.items():
        for line in notes:
            out.print(f"{experiment}: {line}", highlight=False)
    if comparison.unpaired:
        out.print(f"without a partner, not compared: {', '.join(comparison.unpaired)}", highlight=False)
    if any(r["paired"] == "by position" for r in comparison.rows):
        out.print("some experiments differ in config and were paired by position", highlight=False)
