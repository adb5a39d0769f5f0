"""``lem energy``: the finaliser's energy analysis of a telemetry trace, per window."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lem_planner.cli.console import EXIT_BAD_INPUT, fail, out, print_json
from lem_planner.cli.tables import cell

energy_cli = typer.Typer(help="Energy analysis of recorded telemetry.", no_args_is_help=True)


@energy_cli.command("analyse")
def energy_analyse(
    trace: Annotated[str, typer.Option(help="Telemetry JSONL: t, power_mw, energy_mj[, temp_c, sm_mhz, reasons].")],
    windows: Annotated[str, typer.Option(help='Windows JSONL: {"name", "start", "end"} (Unix seconds).')],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    min_window_s: Annotated[float, typer.Option(help="Windows shorter than this get a warning.")] = 10.0,
    interval_s: Annotated[float | None, typer.Option(help="Sampling interval; inferred when absent.")] = None,
) -> None:
    """Energy, power, clock-event shares and validity checks per window — the finaliser's own analysis."""
    from lem_shared.measure.analysis import RunContext, Thresholds, analyse_window
    from lem_shared.measure.trace import TraceError, read_trace, read_windows

    try:
        samples, spans = read_trace(trace), read_windows(windows)
    except TraceError as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    limits = Thresholds(min_window_s=min_window_s)
    results = [
        analyse_window(
            samples, start, end, name=name, context=RunContext(interval_s=interval_s), thresholds=limits
        ).to_dict()
        for name, start, end in spans
    ]
    if as_json:
        print_json(results)
        return
    table = Table("window", "s", "counter J", "∫P dt J", "P", "gap %", "mean W", "peak W", "updates", "verdict")
    for r in results:
        table.add_row(
            r["name"],
            f"{r['duration_s']:.2f}",
            cell(r["energy_counter_j"], ".1f"),
            cell(r["energy_integral_j"], ".1f"),
            {"instant": "inst", "average": "avg"}.get(r["power_source"], "-"),
            cell(r["disagreement_pct"], "+.2f"),
            cell(r["mean_power_w"], ".0f"),
            cell(r["peak_power_w"], ".0f"),
            str(r["counter_updates"]),
            r["verdict"],
        )
    out.print(table)
    for r in results:
        for check in r["checks"]:
            if check["status"] in ("warning", "fail"):
                out.print(f"{r['name']}: {check['status']}: {check['name']}: {check['message']}", highlight=False)
