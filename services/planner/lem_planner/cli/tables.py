"""The tables and notes the campaign and results commands print: a label per experiment, the results table (a
row per run), the experiments table (means with their CIs)."""

from __future__ import annotations

import textwrap
from typing import Any

from rich.table import Table

from lem_planner.cli.console import out
from lem_shared.config.keys import flatten

_LABEL_VALUE_CHARS = 24  # longer values are cut in labels and captions
_LABEL_KEYS = 5  # a label names at most this many of the keys that vary (the rest: `lem results show --json`)
_NOTE_WIDTH = 80


def _key_value(key: str, value: Any) -> str:
    text = str(value)
    return f"{key}={text if len(text) <= _LABEL_VALUE_CHARS else text[: _LABEL_VALUE_CHARS - 1] + '…'}"


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


def describe_experiments(configs: list[dict[str, Any]]) -> tuple[list[str], str]:
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
    common = [
        k for k in keys if k not in varying and all(k in f for f in flat) and k.split(".")[-1] not in ("kind", "seed")
    ]
    return labels, text(flat[0], common) if flat else ""


def cell(value: float | None, spec: str) -> str:
    """A figure of a table cell: ``value`` in ``spec``, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def _metric_column(table: Table, header: str) -> None:
    """A figure column: never wrapped nor shrunk (labels and statuses give up the width instead)."""
    table.add_column(header, justify="right", no_wrap=True)


def results_table(campaign_id: int, legend: bool = True) -> None:
    """A row per run; ``legend``: first the label of each experiment (``show`` gives them in its experiments
    table after)."""
    from lem_planner.results import j_per_token_text, run_records

    records = run_records(campaign_id)
    configs = {r["experiment_index"]: r["experiment"] for r in records}
    labels, caption = describe_experiments([configs[i] for i in sorted(configs)])
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
        table.add_row(
            str(r["experiment_index"]),
            str(r["cycle"]),
            f"{status} ({r['verdict']})" if r["verdict"] else status,
            cell(r["tokens_per_s"], ".1f"),
            cell(r["latency_mean_s"], ".3f"),
            cell(r["ttft_mean_s"], ".3f"),
            cell(r["energy_j"], ".1f") if r["energy_j"] is not None or r["status"] != "done" else "n/a",
            j_per_token_text(r["j_per_token"]) if r["status"] == "done" else "-",
        )
    out.print(table)
    notes = {r["energy_note"] for r in records if r["energy_j"] is None and r["energy_note"]}
    for note in sorted(notes):
        out.print(f"energy: {note}", highlight=False)
    for line in run_notes(records):
        _print_wrapped(line)


def _print_wrapped(text: str) -> None:
    """A note under a table, wrapped within 80 columns (or the terminal's, when narrower), later lines indented."""
    width = min(out.width, _NOTE_WIDTH)
    for line in textwrap.wrap(text, width=width, subsequent_indent="    ", break_on_hyphens=False) or [""]:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def run_notes(records: list[dict[str, Any]]) -> list[str]:
    """What the results table cannot say in a cell: why a run's verdict is not ``valid`` (each failed or warned
    check, with its message), and, for imported runs, the earlier tool's own tokens/s beside ours."""
    lines = [
        f"exp {r['experiment_index']} cycle {r['cycle']}: {c['status']}: {c['message']}"
        for r in records
        for c in r["checks"] or []
        if c["status"] in ("fail", "warning")
    ]
    theirs = [(r, r["imported_tokens_per_s"]) for r in records if r.get("imported_tokens_per_s")]
    if theirs:
        lines.append(
            "tokens per s above: output tokens per second of the window (ours); the earlier tool's own "
            "figure (avg_tokens_per_second) counts other tokens in some versions:"
        )
        lines += [
            f"  exp {r['experiment_index']} cycle {r['cycle']}: {t['value']:.1f} tokens/s of {t['counts']}"
            for r, t in theirs
        ]
    return lines


def _ci_cell(metric: dict[str, Any], spec: str, scale: float = 1.0) -> str:
    """A mean with its interval below it, one end a line, so figure columns stay narrow."""
    if metric["mean"] is None:
        return "n/a"
    mean = format(metric["mean"] * scale, spec)
    if metric["ci_low"] is None or metric["ci_high"] is None:
        return f"{mean}\n(no CI)"
    return f"{mean}\n[{metric['ci_low'] * scale:{spec}},\n{metric['ci_high'] * scale:{spec}}]"


def experiments_table(campaign_id: int, summaries: list[dict[str, Any]]) -> None:
    """Per experiment: its label, done cycles, and the mean of each figure with its CI; then each one's notes."""
    if not summaries:
        return
    from lem_planner.results import j_per_token_text, summary_notes

    labels, _ = describe_experiments([e["experiment"] for e in summaries])
    ci = summaries[0]["ci"]
    table = Table(
        title=f"campaign {campaign_id}: mean [{ci['confidence']:.0%} CI] across done cycles",
        caption=f"{ci['method']}, {ci['resamples']:,} resamples, seed {ci['seed']}",
    )
    table.add_column("exp", justify="right", no_wrap=True)
    table.add_column("experiment", overflow="fold")
    table.add_column("done", justify="right", no_wrap=True)
    for header in ("tokens\nper s", "energy\nper token", "energy\nJ", "TTFT\ns", "ITL\nms"):
        _metric_column(table, header)
    for label, e in zip(labels, summaries, strict=True):
        m = e["metrics"]
        per_token = m["j_per_token"]
        table.add_row(
            str(e["experiment_index"]),
            label,
            f"{e['runs_done']}/{e['runs']}",
            _ci_cell(m["tokens_per_s"], ".1f"),
            j_per_token_text(per_token["mean"], per_token["ci_low"], per_token["ci_high"], sep="\n"),
            _ci_cell(m["energy_j"], ".1f"),
            _ci_cell(m["ttft_mean_s"], ".3f"),
            _ci_cell(m["itl_mean_s"], ".2f", 1000),
        )
    out.print(table)
    serving_table(campaign_id, labels, summaries)
    for e in summaries:
        for line in summary_notes(e):
            out.print(f"exp {e['experiment_index']}: {line}", highlight=False)


def serving_table(campaign_id: int, labels: list[str], summaries: list[dict[str, Any]]) -> None:
    """The serving experiments' own figures: steady-state J/token, p99 TPOT, goodput and per-request energy."""
    from lem_planner.results import j_per_token_text

    rows = [(label, e) for label, e in zip(labels, summaries, strict=True) if "tpot_p99_s" in e["metrics"]]
    if not rows:
        return
    table = Table(title=f"campaign {campaign_id}: serving, mean [CI] across done cycles")
    table.add_column("exp", justify="right", no_wrap=True)
    table.add_column("experiment", overflow="fold")
    for header in ("steady energy\nper token", "p99 TPOT\nms", "goodput\nreq/s", "request\nenergy p50 J"):
        _metric_column(table, header)
    for label, e in rows:
        m = e["metrics"]
        steady = m["steady_j_per_token"]
        table.add_row(
            str(e["experiment_index"]),
            label,
            j_per_token_text(steady["mean"], steady["ci_low"], steady["ci_high"], sep="\n"),
            _ci_cell(m["tpot_p99_s"], ".1f", 1000),
            _ci_cell(m["goodput_rps"], ".2f"),
            _ci_cell(m["request_energy_p50_j"], ".2f"),
        )
    out.print(table)
