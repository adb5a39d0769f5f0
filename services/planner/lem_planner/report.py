"""``lem results report``: one self-contained HTML page per campaign, and its figures as PNG and SVG files.

The page holds the campaign header and every figure the campaign's data supports, each decided from the data:
a power and temperature timeline per GPU with every run's measurement window shaded (GPU telemetry);
throughput, TTFT and latency against the swept parameter with 95 % bootstrap CIs per backend (any done run);
J/token against the swept parameter and Pareto fronts of J/token against throughput and latency (energy);
prefill against decode per prompt (``measurement.phase_split``); idle against active energy (a baseline); for
serving runs (``workload.mode: serving``) J/token against p99 TPOT and goodput with each backend's Pareto front,
and the per-request energy per experiment (offline-only campaigns have no serving section). A per-experiment
table and the validity table of every run follow. Where the data of a figure is absent a note says why. The
figures are drawn by ``report_figures`` and inlined as SVG (the page has no external CSS, script, font or image)
and also written, as PNG and SVG, into a folder beside the page.

The command is ``lem_planner.cli.results``; matplotlib, numpy and SQLAlchemy are imported inside the functions
that use them.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lem_planner.report_figures import (
    FigureFiles,
    GpuSeries,
    IdleActiveBar,
    ParetoPoint,
    PhaseBar,
    Point,
    RequestEnergyBox,
    ServingPoint,
    idle_active_figure,
    pareto_figure,
    phase_figure,
    request_energy_figure,
    serving_figure,
    sweep_figure,
    timeline_figure,
)
from lem_shared.config.keys import flatten

# Points per GPU timeline: samples are averaged (min and max kept as a band) into this many time bins.
TIMELINE_POINTS = 1500
# Config keys that say how a run was measured or seeded, not what was measured: never "the swept parameter".
_NOT_SWEPT = ("measurement.", "workload.seed", "workload.kind")


class UnknownCampaign(LookupError):
    pass


# --- data -----------------------------------------------------------------------------------------------------


@dataclass
class CampaignData:
    campaign: dict[str, Any]
    records: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    versions: Counter[tuple[str | None, str | None]]
    phases: dict[int, dict[str, Any]]
    labels: dict[int, str] = field(default_factory=dict)  # experiment index -> what varies
    caption: str = ""
    request_energies: dict[int, list[float | None]] = field(default_factory=dict)  # serving run id -> per request


def is_serving(config: dict[str, Any]) -> bool:
    """Whether an experiment's config is a serving run (``workload.mode: serving``; offline leaves it out)."""
    return (config.get("workload") or {}).get("mode") == "serving"


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The flattened config keys whose values differ between ``configs`` (first-seen order; absent counts)."""
    flat = [flatten(c) for c in configs]
    keys: dict[str, None] = {}
    for f in flat:
        keys.update(dict.fromkeys(f))
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def swept_parameter(configs: list[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """(the first numeric swept key, the other varying keys) — backend is never either: it groups the series."""
    varying = [k for k in varying_keys(configs) if k != "backend"]
    flat = [flatten(c) for c in configs]
    for key in varying:
        if key.startswith(_NOT_SWEPT):
            continue
        values = [f[key] for f in flat if f.get(key) is not None]
        if values and all(_is_number(v) for v in values) and len(set(values)) > 1:
            return key, [k for k in varying if k != key]
    return None, varying


def _label(flat: dict[str, Any], keys: Iterable[str]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={flat[k]}" for k in keys if flat.get(k) is not None)


def _load(campaign_id: int) -> CampaignData:
    from sqlalchemy import select

    from lem_planner.results import experiment_summaries, run_records
    from lem_shared.db.models import Campaign, Run
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        c = s.get(Campaign, campaign_id)
        if c is None:
            raise UnknownCampaign(f"no campaign {campaign_id}")
        campaign = {
            "id": c.id,
            "name": c.name,
            "status": c.status,
            "created": c.created_at,
            "finished": c.finished_at,
            "seed": c.seed,
            "source": c.source,
            "imported_from": c.imported_from,
            "structure": (c.spec or {}).get("structure"),
            "cycles": (c.spec or {}).get("cycles"),
        }
        rows = s.execute(
            select(Run.id, Run.schema_version, Run.tool_version, Run.phases).where(Run.campaign_id == campaign_id)
        ).all()
    versions = Counter((r.schema_version, r.tool_version) for r in rows)
    phases = {r.id: r.phases for r in rows if r.phases}
    records = run_records(campaign_id)
    summaries = experiment_summaries(campaign_id, records=records)
    data = CampaignData(campaign, records, summaries, versions, phases)
    if any(is_serving(e["experiment"]) for e in summaries):
        data.request_energies = _request_energies(campaign_id)
    configs = [e["experiment"] for e in summaries]
    varying = varying_keys(configs)
    for e in summaries:
        data.labels[e["experiment_index"]] = _label(flatten(e["experiment"]), varying) or "(base)"
    if configs:
        shared = flatten(configs[0])
        data.caption = " ".join(
            f"{k.rsplit('.', 1)[-1]}={v}"
            for k, v in shared.items()
            if k not in varying and v is not None and not k.endswith((".kind", ".seed"))
        )
    return data


def _request_energies(campaign_id: int) -> dict[int, list[float | None]]:
    """Per run of the campaign, its stored requests' energies in request order (None: no energy)."""
    from sqlalchemy import select

    from lem_shared.db.models import RequestTimingRow, Run
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        rows = s.execute(
            select(RequestTimingRow.run_id, RequestTimingRow.energy_j)
            .join(Run, Run.id == RequestTimingRow.run_id)
            .where(Run.campaign_id == campaign_id)
            .order_by(RequestTimingRow.run_id, RequestTimingRow.request_index)
        ).all()
    energies: dict[int, list[float | None]] = defaultdict(list)
    for run_id, energy in rows:
        energies[run_id].append(energy)
    return dict(energies)


def gpu_series(gpu_uuid: str, start: float, end: float, points: int = TIMELINE_POINTS) -> GpuSeries | None:
    """The GPU's samples between ``start`` and ``end`` (Unix s) binned by the database into at most ``points``
    bins: mean, min and max power (instantaneous where recorded), mean temperature. None when there is no sample."""
    from sqlalchemy import func, select

    from lem_shared.db.models import GpuSample
    from lem_shared.db.session import session_scope

    width = max((end - start) / points, 1e-3)
    epoch = func.extract("epoch", GpuSample.time)
    bucket = func.floor((epoch - start) / width).label("bucket")
    # Instantaneous power where the GPU has it (the averaged reading smooths every step over ~1 s), else that.
    power = func.coalesce(GpuSample.power_instant_w, GpuSample.power_w)
    query = (
        select(
            bucket,
            func.avg(epoch),
            func.avg(power),
            func.min(power),
            func.max(power),
            func.avg(GpuSample.temperature_c),
            func.count(),
            func.min(GpuSample.host),
        )
        .where(
            GpuSample.gpu_uuid == gpu_uuid,
            GpuSample.time >= datetime.fromtimestamp(start, UTC),
            GpuSample.time <= datetime.fromtimestamp(end, UTC),
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    with session_scope() as s:
        rows = s.execute(query).all()
    if not rows:
        return None

    def num(x: Any) -> float | None:
        return None if x is None else float(x)

    return GpuSeries(
        gpu_uuid=gpu_uuid,
        host=rows[0][7],
        t=[float(r[1]) for r in rows],
        power_mean=[num(r[2]) for r in rows],
        power_min=[num(r[3]) for r in rows],
        power_max=[num(r[4]) for r in rows],
        temperature=[num(r[5]) for r in rows],
        samples=sum(int(r[6]) for r in rows),
        bin_s=width,
    )


# --- the page -------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;background:#f6f7f9;
color:#1d2330;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:34px 0 8px;border-bottom:1px solid #dde1e7;
padding-bottom:4px}
.sub{color:#5a6272;margin:0 0 16px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0}
dl.meta dt{color:#5a6272}dl.meta dd{margin:0;font-variant-numeric:tabular-nums}
figure{margin:10px 0 18px}figure svg{width:100%;height:auto;display:block}
figcaption{color:#5a6272;font-size:.9em;margin-top:4px}
.note{background:#fff8e5;border-left:4px solid #e0a800;padding:8px 12px;margin:10px 0}
table{border-collapse:collapse;width:100%;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #dde1e7;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;white-space:nowrap}
tr.valid td.verdict{background:#e3f4e6}tr.warning td.verdict{background:#fff1cc}
tr.invalid td.verdict{background:#fbdcdc}tr.none td.verdict{background:#f1f1f1}td.label{min-width:200px}
ul.checks{margin:0;padding-left:16px}li.fail{color:#a1161b}li.warning{color:#8a5a00}
code{background:#f1f3f6;padding:0 3px;border-radius:3px}
footer{color:#7a8190;font-size:.82em;margin-top:40px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "–"


def _note(kind: str, text: str) -> str:
    return f'<p class="note" data-note="{kind}">{_e(text)}</p>'


def _energy_notes(records: list[dict[str, Any]]) -> str:
    notes = sorted({r["energy_note"] for r in records if r["energy_j"] is None and r["energy_note"]})
    return "; ".join(notes)


def _header(data: CampaignData, sweep: str | None, others: list[str]) -> str:
    c = data.campaign
    statuses = Counter(r["status"] for r in data.records)
    runs = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"
    schema = sorted({s for s, _ in data.versions if s}) or ["not recorded"]
    tools = sorted({t for _, t in data.versions if t}) or ["not recorded"]
    hosts = sorted({r["host"] for r in data.records if r["host"]})
    devices = sorted({r["device"] for r in data.records if r["device"]})
    gpus = sorted({r["gpu_uuid"] for r in data.records if r["gpu_uuid"]})
    backends = sorted({e["backend"] for e in data.summaries})
    rows = [
        ("status", c["status"]),
        ("created", _when(c["created"])),
        ("finished", _when(c["finished"])),
        ("experiments", f"{len(data.summaries)} ({', '.join(backends) or 'no backend'})"),
        ("runs", f"{len(data.records)}: {runs}"),
        ("swept parameter", sweep or "none (no numeric parameter varies)"),
        ("what else varies", ", ".join(others) or "nothing"),
        ("fixed", data.caption or "–"),
        ("hosts / devices", f"{', '.join(hosts) or '–'} / {', '.join(devices) or '–'}"),
        ("GPUs", ", ".join(gpus) or "none (no GPU telemetry)"),
        ("schema version", ", ".join(schema)),
        ("tool version", ", ".join(tools)),
    ]
    if c["structure"] or c["seed"] is not None:
        seed = f" (seed {c['seed']})" if c["seed"] is not None else ""
        rows.append(("order", f"{c['structure'] or 'default'}{seed}"))
    if c["source"] != "lem":
        rows.append(("source", f"{c['source']}: {c['imported_from'] or ''}"))
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return (
        f'<section id="campaign"><h1>Campaign {c["id"]}: {_e(c["name"])}</h1>'
        f'<p class="sub">LLenergyMeasure results report</p><dl class="meta">{meta}</dl></section>'
    )


def _timeline_section(data: CampaignData, figures: FigureFiles) -> str:
    parts = ['<section id="timeline"><h2>Power and temperature over time</h2>']
    windows_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data.records:
        if r["gpu_uuid"] and r["window_start"] and r["window_end"]:
            windows_of[r["gpu_uuid"]].append(
                {
                    "experiment_index": r["experiment_index"],
                    "cycle": r["cycle"],
                    "start": datetime.fromisoformat(r["window_start"]).timestamp(),
                    "end": datetime.fromisoformat(r["window_end"]).timestamp(),
                    "run_id": r["run_id"],
                }
            )
    if not windows_of:
        devices = sorted({r["device"] for r in data.records if r["device"]})
        why = f"the runs ran on {', '.join(devices)}" if devices else "no run has a measurement window yet"
        parts.append(
            _note(
                "timeline",
                f"No GPU telemetry for this campaign ({why}; power and temperature come "
                "from NVML on GPUs only): no timeline.",
            )
        )
    for n, (gpu, windows) in enumerate(sorted(windows_of.items())):
        windows.sort(key=lambda w: w["start"])
        first, last = windows[0]["start"], max(w["end"] for w in windows)
        deep = None
        for w in windows:
            span = (data.phases.get(w["run_id"]) or {}).get("deep_idle")
            if span:
                deep = (float(span[0]), float(span[1]))
                break
        lo = min(first, deep[0]) if deep else first
        pad = max(2.0, 0.02 * (last - lo))
        series = gpu_series(gpu, lo - pad, last + pad)
        if series is None or len(series.t) < 2:
            parts.append(
                _note(
                    "timeline",
                    f"No telemetry stored for {gpu} between the campaign's first and last "
                    "measurement window (was lem-telemetry running on its host?).",
                )
            )
            continue
        svg = figures.inline(
            timeline_figure(series, windows, first, data.labels, deep, (lo - pad, last + pad)),
            f"plot-timeline-{n}",
            f"tl{n}",
        )
        hatched = ", hatched: the deep-idle baseline" if deep else ""
        parts.append(
            f'<figure id="plot-timeline-{n}" data-plot="timeline" data-gpu="{_e(gpu)}">{svg}'
            f"<figcaption>{_e(gpu)}: {series.samples:,} samples averaged into {len(series.t):,} bins of "
            f"{series.bin_s:.2g} s (the band: each bin's min–max power); shaded: the measurement "
            f"window of each run (e&lt;experiment&gt;·c&lt;cycle&gt;){hatched}.</figcaption>"
            "</figure>"
        )
    parts.append("</section>")
    return "".join(parts)


def _done_runs(data: CampaignData) -> dict[int, list[dict[str, Any]]]:
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in data.records:
        if r["status"] == "done":
            by_experiment[r["experiment_index"]].append(r)
    return by_experiment


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _sweep_points(
    data: CampaignData,
    sweep: str | None,
    others: list[str],
    value: Callable[[dict], float | None],
    what: str,
    spread: Callable[[dict], float | None] | None = None,
    summary_metric: str | None = None,
) -> tuple[list[Point], list[str]]:
    """Per experiment the mean of ``value`` over its done runs with the 95 % bootstrap CI, at its swept value;
    and the experiments left out, each with why."""
    from lem_shared.measure.stats import bootstrap_ci

    done = _done_runs(data)
    points, missing = [], []
    for e in data.summaries:
        runs = done[e["experiment_index"]]
        flat = flatten(e["experiment"])
        x = flat.get(sweep) if sweep else (_label(flat, others) or e["backend"])
        ci = bootstrap_ci([value(r) for r in runs])
        if ci.estimate is None or (sweep and x is None):
            reason = (
                "no runs done"
                if not runs
                else f"no {sweep}"
                if ci.estimate is not None
                else (summary_metric and e["metrics"][summary_metric]["reason"]) or f"no {what} figures"
            )
            missing.append(f"e{e['experiment_index']} ({reason})")
            continue
        points.append(
            Point(
                e["experiment_index"],
                e["backend"],
                x,
                _label(flat, others) if sweep else "",
                ci.estimate,
                ci.low,
                ci.high,
                _mean(spread(r) for r in runs) if spread else None,
            )
        )
    return points, missing


def _sweep_caption(sweep: str | None, others: list[str]) -> str:
    what = f"x: <code>{_e(sweep)}</code>" if sweep else "no numeric parameter is swept; one point per experiment"
    return what + (f"; also varying: {_e(', '.join(others))} (one series each)" if others else "")


_CI_CAPTION = (
    "Error bars: 95 % percentile-bootstrap CI over done cycles (10,000 resamples, seed 0); hollow markers: "
    "fewer than 2 cycles, no interval."
)


def _ttft(r: dict[str, Any]) -> float | None:
    return r["ttft_p50_s"] if r["ttft_p50_s"] is not None else r["ttft_mean_s"]


# (figure id, SVG key, metric, y label, title, per-run value, per-run spread and its legend, caption)
_PERFORMANCE_PLOTS: list[
    tuple[
        str, str, str, str, str, Callable[[dict], float | None], Callable[[dict], float | None] | None, str | None, str
    ]
] = [
    (
        "plot-throughput",
        "tput",
        "throughput",
        "output tokens per second [tokens/s]",
        "Throughput",
        lambda r: r["tokens_per_s"],
        None,
        None,
        "Output tokens over the measurement window's length.",
    ),
    (
        "plot-ttft",
        "ttft",
        "TTFT",
        "time to first token [s]",
        "TTFT p50",
        _ttft,
        lambda r: r["ttft_p90_s"],
        "p90 (mean over cycles)",
        "Per run: the median time to first token over its requests (the engine's per-request TTFT where it reports "
        "one, else each batch's), or the run's mean TTFT where it has no per-batch timings; dashed, hollow: the p90, "
        "the spread over requests.",
    ),
    (
        "plot-latency",
        "lat",
        "latency",
        "per-request latency [s]",
        "Mean latency",
        lambda r: r["latency_mean_s"],
        lambda r: r.get("latency_p90_s"),
        "p90 (mean over cycles)",
        "Per run: the mean end-to-end latency of its requests; dashed, hollow: the p90 over its batches.",
    ),
]


def _performance_section(data: CampaignData, sweep: str | None, others: list[str], figures: FigureFiles) -> str:
    parts = ['<section id="performance"><h2>Throughput, TTFT and latency against the swept parameter</h2>']
    for figure_id, key, what, ylabel, title, value, spread, spread_label, caption in _PERFORMANCE_PLOTS:
        points, missing = _sweep_points(data, sweep, others, value, what, spread)
        if not points:
            parts.append(
                _note(
                    key,
                    f"No {what} figure: no done run has a {what} figure"
                    + (f" ({'; '.join(missing)})" if missing else "")
                    + ".",
                )
            )
            continue
        if key == "ttft" and any(
            r["ttft_p50_s"] is None and r["ttft_mean_s"] is not None for r in data.records if r["status"] == "done"
        ):
            title = "TTFT (p50; the mean where a run has no per-batch timings)"
        svg = figures.inline(sweep_figure(points, sweep, ylabel, title, spread_label), figure_id, key)
        parts.append(
            f'<figure id="{figure_id}" data-plot="{key}" data-points="{len(points)}">{svg}<figcaption>'
            f"{_sweep_caption(sweep, others)}. {_e(caption)} {_CI_CAPTION}</figcaption></figure>"
        )
        if missing:
            parts.append(_note(f"{key}-missing", "Not plotted: " + "; ".join(missing) + "."))
    parts.append("</section>")
    return "".join(parts)


def _energy_section(data: CampaignData, sweep: str | None, others: list[str], figures: FigureFiles) -> str:
    parts = ['<section id="energy"><h2>J/token against the swept parameter</h2>']
    points, missing = _sweep_points(
        data, sweep, others, lambda r: r["j_per_token"], "energy", summary_metric="j_per_token"
    )
    if not points:
        notes = _energy_notes(data.records)
        parts.append(
            _note(
                "energy",
                "No J/token figures: no done run has an energy figure"
                + (f" ({notes})" if notes else "")
                + ", so there is nothing to plot.",
            )
        )
    else:
        drawn = sweep_figure(points, sweep, "energy per output token [J/token]", "J/token")
        svg = figures.inline(drawn, "plot-j-per-token", "jpt")
        parts.append(
            f'<figure id="plot-j-per-token" data-plot="j-per-token" data-points="{len(points)}">{svg}'
            f"<figcaption>{_sweep_caption(sweep, others)}. {_CI_CAPTION}</figcaption></figure>"
        )
    if missing and points:
        parts.append(_note("energy-missing", "Not plotted: " + "; ".join(missing) + "."))
    parts.append("</section>")
    return "".join(parts)


def _pareto_section(data: CampaignData, figures: FigureFiles) -> str:
    from lem_shared.measure.stats import bootstrap_ci

    parts = ['<section id="pareto"><h2>Pareto fronts: J/token against throughput and latency</h2>']
    done = _done_runs(data)
    for figure_id, key, field_, xlabel, higher_is_better, what in (
        (
            "plot-pareto-throughput",
            "ptput",
            "tokens_per_s",
            "throughput [tokens/s]",
            True,
            "throughput is output tokens per second of the measurement window",
        ),
        (
            "plot-pareto",
            "pareto",
            "latency_mean_s",
            "mean per-request latency [s]",
            False,
            "latency is the mean per-request latency",
        ),
    ):
        points = []
        for e in data.summaries:
            m = e["metrics"]["j_per_token"]
            x = bootstrap_ci([r[field_] for r in done[e["experiment_index"]]])
            if m["mean"] is not None and x.estimate is not None:
                points.append(
                    ParetoPoint(
                        e["experiment_index"],
                        e["backend"],
                        x.estimate,
                        x.low,
                        x.high,
                        m["mean"],
                        m["ci_low"],
                        m["ci_high"],
                    )
                )
        name = xlabel.split(" [")[0]
        if not points:
            notes = _energy_notes(data.records)
            parts.append(
                _note(
                    key,
                    f"No Pareto front of J/token against {name}: it needs experiments with both "
                    f"J/token and {name}" + (f" ({notes})" if notes else "") + ".",
                )
            )
            continue
        drawn, front = pareto_figure(points, xlabel, higher_is_better)
        svg = figures.inline(drawn, figure_id, key)
        listed = "; ".join(f"e{i}: {_e(data.labels.get(i, ''))}" for i in front)
        parts.append(
            f'<figure id="{figure_id}" data-plot="{key}" data-points="{len(points)}" '
            f'data-front="{" ".join(map(str, front))}">{svg}<figcaption>Per experiment: mean over done '
            f"cycles with 95 % bootstrap CIs on both axes; {what}. On the front: {listed}.</figcaption>"
            "</figure>"
        )
    parts.append("</section>")
    return "".join(parts)


def _serving_points(data: CampaignData, serving: list[dict[str, Any]]) -> tuple[list[ServingPoint], list[str]]:
    """Per serving experiment with a p99 TPOT: the means over its done runs with 95 % bootstrap CIs of p99 TPOT
    (ms), goodput and J/token (the steady state's, else the whole window's where no run has a steady figure);
    and the experiments left out, each with why."""
    from lem_shared.measure.stats import bootstrap_ci

    done = _done_runs(data)
    points, missing = [], []
    for e in serving:
        runs = done[e["experiment_index"]]
        tpot = bootstrap_ci([r["tpot_p99_s"] * 1000 for r in runs if r["tpot_p99_s"] is not None])
        if tpot.estimate is None:
            why = "no runs done" if not runs else "no p99 TPOT (every request had 1 output token)"
            missing.append(f"e{e['experiment_index']} ({why})")
            continue
        goodput = bootstrap_ci([r["goodput_rps"] for r in runs])
        steady = any(r["steady_j_per_token"] is not None for r in runs)
        jpt = bootstrap_ci([r["steady_j_per_token" if steady else "j_per_token"] for r in runs])
        points.append(
            ServingPoint(
                e["experiment_index"],
                e["backend"],
                tpot.estimate,
                tpot.low,
                tpot.high,
                goodput.estimate,
                goodput.low,
                goodput.high,
                jpt.estimate,
                jpt.low,
                jpt.high,
                steady or jpt.estimate is None,
            )
        )
    return points, missing


def _serving_section(data: CampaignData, figures: FigureFiles) -> str:
    """J/token against p99 TPOT and goodput, and the per-request energy, of the serving experiments; nothing
    for a campaign without serving runs."""
    serving = [e for e in data.summaries if is_serving(e["experiment"])]
    if not serving:
        return ""
    parts = ['<section id="serving"><h2>Serving: energy against TPOT and goodput, energy per request</h2>']
    energy_note = _energy_notes(data.records) or "n/a (no done run has an energy figure)"
    points, missing = _serving_points(data, serving)
    if not points:
        parts.append(_note("serving", "No serving figure: " + ("; ".join(missing) or "no done serving run") + "."))
    else:
        drawn, fronts = serving_figure(points, energy_note)
        svg = figures.inline(drawn, "plot-serving-tpot", "tpot")
        has_energy = any(p.jpt is not None for p in points)
        fallback = [f"e{p.experiment_index}" for p in points if not p.steady]
        on_front = "; ".join(
            f"{backend}: {', '.join(f'e{i}' for i in front)}" for backend, front in fronts.get("tpot", {}).items()
        )
        what = (
            f"y: the steady state's J/token{' (whole window for ' + ', '.join(fallback) + ')' if fallback else ''}; "
            f"on each backend's front against p99 TPOT: {on_front}."
            if has_energy
            else f"no J/token, energy {energy_note}: only where each experiment lies on x is drawn."
        )
        parts.append(
            f'<figure id="plot-serving-tpot" data-plot="serving-tpot" data-points="{len(points)}" '
            f'data-energy="{str(has_energy).lower()}" data-goodput="{str("goodput" in fronts).lower()}" '
            f'data-front="{" ".join(str(i) for front in fronts.get("tpot", {}).values() for i in front)}">{svg}'
            "<figcaption>Per serving experiment: mean over done runs of each run's p99 TPOT (time per output "
            "token after the first, over its requests) and goodput (requests meeting every workload.slo "
            f"objective per second) against J/token, with 95 % bootstrap CIs on both axes; {_e(what)} "
            "A point is on its backend's front when no other point of that backend has both lower p99 TPOT and "
            "lower J/token (against goodput: higher goodput and lower J/token).</figcaption></figure>"
        )
    if missing and points:
        parts.append(_note("serving-missing", "Not plotted: " + "; ".join(missing) + "."))

    done = _done_runs(data)
    boxes = []
    for e in serving:
        energies = [v for r in done[e["experiment_index"]] for v in data.request_energies.get(r["run_id"], [])]
        boxes.append(
            RequestEnergyBox(
                _tick_label(data, e["experiment_index"]), [v for v in energies if v is not None], len(energies)
            )
        )
    if not any(b.requests for b in boxes):
        parts.append(_note("request-energy", "No per-request energy: no done serving run has stored requests."))
        return "".join(parts) + "</section>"
    with_energy = sum(len(b.energies) for b in boxes)
    svg = figures.inline(request_energy_figure(boxes, energy_note), "plot-request-energy", "reqe")
    why = "" if with_energy else f" No request has energy: energy {energy_note}."
    parts.append(
        f'<figure id="plot-request-energy" data-plot="request-energy" data-points="{len(boxes)}" '
        f'data-requests="{sum(b.requests for b in boxes)}" data-with-energy="{with_energy}">{svg}'
        "<figcaption>Per serving experiment, the requests of its done runs pooled: each request's energy, its "
        "token share of every engine step it was in (request_timings.energy_j; only requests with energy). Box: "
        f"quartiles and median, whiskers at 1.5 IQR, triangle: the mean.{_e(why)}</figcaption></figure>"
    )
    return "".join(parts) + "</section>"


def _tick_label(data: CampaignData, index: int) -> str:
    return f"e{index}\n" + data.labels.get(index, "").replace(" ", "\n")


def _phase_bars(data: CampaignData, figure: str) -> list[PhaseBar]:
    """Per experiment with a phase split, the mean over its done runs of the per-prompt ``figure`` per phase."""
    from lem_shared.measure.stats import bootstrap_ci

    bars = []
    for index, runs in sorted(_done_runs(data).items()):
        splits = [r["phase_split"]["per_prompt"] for r in runs if r["phase_split"]]
        if not splits:
            continue
        values = {}
        for phase in ("prefill", "decode"):
            ci = bootstrap_ci([s[phase].get(figure) for s in splits])
            values[phase] = (ci.estimate, (ci.low, ci.high) if ci.low is not None and ci.high is not None else None)
        bars.append(
            PhaseBar(
                _tick_label(data, index),
                values["prefill"][0],
                values["prefill"][1],
                values["decode"][0],
                values["decode"][1],
            )
        )
    return bars


def _phase_section(data: CampaignData, figures: FigureFiles) -> str:
    parts = ['<section id="phases"><h2>Prefill and decode</h2>']
    bars = _phase_bars(data, "time_s")
    if not bars:
        parts.append(
            _note(
                "phases",
                "No prefill/decode figure: no done run measured with "
                "measurement.phase_split: true (it measures a prefill-only window apart).",
            )
        )
        return "".join(parts) + "</section>"
    panels = [("time per prompt [s]", bars)]
    energy = _phase_bars(data, "energy_j")
    has_energy = any(b.prefill is not None or b.decode is not None for b in energy)
    if has_energy:
        panels += [("energy per prompt [J]", energy), ("energy per token [J/token]", _phase_bars(data, "j_per_token"))]
    svg = figures.inline(phase_figure(panels), "plot-phase-split", "phase")
    why = (
        ""
        if has_energy
        else (
            " No energy per phase: " + (_energy_notes(data.records) or "no energy figure") + ", so only time is split."
        )
    )
    parts.append(
        f'<figure id="plot-phase-split" data-plot="phase-split" data-points="{len(bars)}" '
        f'data-energy="{str(has_energy).lower()}">{svg}<figcaption>Per experiment, mean over done cycles '
        "(error bars: 95 % bootstrap CI, from 2 cycles): prefill is the prefill-only window per prompt, "
        "decode the full window per prompt less prefill; J/token is per input token for prefill and per "
        f"output token after the first for decode.{_e(why)}</figcaption></figure>"
    )
    problems = sorted({p for r in data.records if r["phase_split"] for p in r["phase_split"].get("problems", [])})
    if problems:
        parts.append(_note("phases-problems", "Phase split problems: " + "; ".join(problems) + "."))
    return "".join(parts) + "</section>"


def _idle_active_section(data: CampaignData, figures: FigureFiles) -> str:
    parts = ['<section id="idle-active"><h2>Idle against active energy</h2>']
    bars, baselines, methods = [], [], set()
    for index, runs in sorted(_done_runs(data).items()):
        split = [
            (r["energy_j"] - r["energy_adjusted_j"], r["energy_adjusted_j"], r["output_tokens"])
            for r in runs
            if r["energy_j"] is not None and r["energy_adjusted_j"] is not None and r["output_tokens"]
        ]
        if split:
            bars.append(
                IdleActiveBar(
                    _tick_label(data, index),
                    sum(i / n for i, _, n in split) / len(split),
                    sum(a / n for _, a, n in split) / len(split),
                )
            )
            baselines += [r["baseline_power_w"] for r in runs if r["baseline_power_w"] is not None]
            methods |= {r["baseline_method"] for r in runs if r["baseline_method"]}
    if not bars:
        with_energy = [r for r in data.records if r["energy_j"] is not None]
        why = (
            "no done run with energy has a baseline power (no idle window was measured)"
            if with_energy
            else "no done run has an energy figure"
            + (f" ({_energy_notes(data.records)})" if _energy_notes(data.records) else "")
        )
        parts.append(_note("idle-active", f"No idle/active split: {why}."))
        return "".join(parts) + "</section>"
    svg = figures.inline(idle_active_figure(bars), "plot-idle-active", "idle")
    parts.append(
        f'<figure id="plot-idle-active" data-plot="idle-active" data-points="{len(bars)}">{svg}'
        "<figcaption>Per experiment, mean over done cycles: idle is the baseline power times the window "
        "(what the GPU draws doing nothing), active the measured energy less it; both per output token. "
        f"Baseline {_fmt(_mean(baselines), '.1f')} W on average ({_e(', '.join(sorted(methods)) or '–')})."
        "</figcaption></figure>"
    )
    return "".join(parts) + "</section>"


def _experiments_section(data: CampaignData) -> str:
    from lem_planner.results import j_per_token_text
    from lem_shared.measure.stats import ci_text

    rows = []
    for e in data.summaries:
        m = e["metrics"]
        notes = [*e["warnings"], *sorted({v["reason"] for v in m.values() if v["reason"]})]
        label = _e(data.labels.get(e["experiment_index"]))
        per_token = m["j_per_token"]
        energy_per_token = j_per_token_text(per_token["mean"], per_token["ci_low"], per_token["ci_high"])
        rows.append(
            f"<tr><td>e{e['experiment_index']}</td><td class=label>{label}</td>"
            f"<td>{_e(e['backend'])}</td><td class=num>{e['runs_done']}/{e['runs']}</td>"
            f"<td class=num>{energy_per_token}</td>"
            f"<td class=num>{ci_text(m['tokens_per_s'], '.1f')}</td>"
            f"<td class=num>{ci_text(m['energy_j'], '.1f')}</td>"
            f"<td>{_e('; '.join(notes))}</td></tr>"
        )
    return (
        '<section id="experiments"><h2>Experiments</h2><table id="experiments-table"><thead><tr><th>exp</th>'
        "<th>experiment</th><th>backend</th><th>done</th><th>energy per token [95 % CI]</th>"
        "<th>tokens/s [95 % CI]</th><th>energy J [95 % CI]</th><th>notes</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _validity_section(data: CampaignData) -> str:
    from lem_planner.results import j_per_token_text

    rows = []
    for r in data.records:
        flagged = [c for c in (r["checks"] or []) if c.get("status") in ("fail", "warning")]
        items = "".join(
            f'<li class="{_e(c["status"])}"><b>{_e(c["status"])}</b> {_e(c.get("name"))}: {_e(c.get("message"))}</li>'
            for c in flagged
        )
        passed = sum(1 for c in (r["checks"] or []) if c.get("status") == "pass")
        if not flagged and r["checks"]:
            not_applicable = len(r["checks"]) - passed
            checks = f"all {passed} passed" + (f" ({not_applicable} n/a)" if not_applicable else "")
        elif not flagged:
            checks = _e(r["error"] or r["energy_note"] or "no checks (not finalised)")
        else:
            checks = f'<ul class="checks">{items}</ul>'
        verdict = r["verdict"] or "none"
        rows.append(
            f'<tr class="{_e(verdict)}" data-run="{r["run_id"]}"><td>e{r["experiment_index"]}</td>'
            f"<td class=label>{_e(data.labels.get(r['experiment_index']))}</td><td class=num>{r['cycle']}</td>"
            f"<td>{_e(r['status'])}</td><td class=verdict>{_e(r['verdict'] or '–')}</td>"
            f"<td class=num>{j_per_token_text(r['j_per_token'])}</td><td>{checks}</td></tr>"
        )
    counts = Counter(r["verdict"] for r in data.records if r["verdict"])
    unjudged = sum(1 for r in data.records if not r["verdict"])
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "No run has a verdict"
    if unjudged and counts:
        summary += f"; {unjudged} run{'s' if unjudged > 1 else ''} without a verdict (not done or no energy)"
    elif unjudged:
        summary += " (no run is done with an energy figure)"
    return (
        f'<section id="validity"><h2>Validity</h2><p>{_e(summary)}.</p><table id="validity-table"><thead><tr>'
        "<th>exp</th><th>experiment</th><th>cycle</th><th>status</th><th>verdict</th><th>energy per token</th>"
        "<th>failed / warned checks</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def figures_folder(path: Path) -> Path:
    """Where the figure files of the page ``path`` go by default: ``<stem>_figures`` beside it."""
    return path.with_name(f"{path.stem}_figures")


def render_report(campaign_id: int, path: Path, figures_dir: Path | None = None) -> Path:
    """Write the campaign's HTML report to ``path``, and each figure as PNG and SVG into ``figures_dir``
    (``<stem>_figures`` beside the page when None), and return the page; ``UnknownCampaign`` when there is none.
    Every file appears whole or not at all (``safe_write``), the page (self-contained) first, the figure folder
    only once it is written: ``BadTarget`` for a target that is not a regular file or whose folder does not exist
    (checked first), ``WriteFailed`` when writing fails (what was there is kept)."""
    from lem_planner.safe_write import BadTarget, check_target, write_atomically
    from lem_shared import TOOL_VERSION

    check_target(path)
    folder = figures_dir or figures_folder(path)
    if folder.exists() and not folder.is_dir() or not folder.parent.is_dir():
        raise BadTarget(f"cannot write the figures into {folder}: it is not a folder or its parent does not exist")
    data = _load(campaign_id)
    sweep, others = swept_parameter([e["experiment"] for e in data.summaries])
    figures = FigureFiles()
    body = "".join(
        [
            _header(data, sweep, others),
            _timeline_section(data, figures),
            _performance_section(data, sweep, others, figures),
            _energy_section(data, sweep, others, figures),
            _pareto_section(data, figures),
            _serving_section(data, figures),
            _phase_section(data, figures),
            _idle_active_section(data, figures),
            _experiments_section(data),
            _validity_section(data),
        ]
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    files = (
        f" Each figure also as PNG and SVG in <code>{_e(folder.name)}/</code> (named after its id)."
        if figures.files
        else ""
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>lem report: campaign '
        f'{campaign_id} ({_e(data.campaign["name"])})</title><meta name="viewport" '
        f'content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body><main>{body}'
        f"<footer>Generated by {_e(TOOL_VERSION)} at {generated} with <code>lem results report "
        f"{campaign_id}</code>.{files}</footer></main></body></html>\n"
    )
    write_atomically(path, lambda f: f.write(page.encode("utf-8")))
    figures.write(folder)
    return path
