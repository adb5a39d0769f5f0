"""``lem results report``: one self-contained HTML page per campaign.

The page holds the campaign header, a power and temperature timeline per GPU with every run's measurement window
shaded, J/token against the swept parameter with 95 % bootstrap CIs per backend, the Pareto front of J/token
against latency, a per-experiment table and the validity table of every run. The figures are drawn by matplotlib
(its SVG backend, through ``Figure`` without pyplot, so no GUI backend is ever loaded) and inlined as SVG: the file
has no external CSS, script, font or image. Plots that need telemetry or energy are replaced by a note saying why
when there is none (CPU campaigns, runs not finalised).

Only light modules are imported at the top: the CLI imports this one to register the command, and matplotlib,
numpy and SQLAlchemy are imported inside the functions that use them.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from lem_shared.config import flatten

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

EXIT_BAD_INPUT = 2
# Points per GPU timeline: samples are averaged (min and max kept as a band) into this many time bins.
TIMELINE_POINTS = 1500
# Config keys that say how a run was measured or seeded, not what was measured: never "the swept parameter".
_NOT_SWEPT = ("measurement.", "workload.seed", "workload.kind")
_BACKEND_COLORS = {"pytorch": "#1f77b4", "vllm": "#ff7f0e", "trtllm": "#2ca02c"}
_OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_WINDOW_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"]
_POWER_COLOR, _TEMPERATURE_COLOR = "#1f4e9c", "#c0392b"


class UnknownCampaign(LookupError):
    pass


# --- data -----------------------------------------------------------------------------------------------------

@dataclass
class GpuSeries:
    """A GPU's telemetry binned over the timeline's span (Unix seconds)."""

    gpu_uuid: str
    host: str | None
    t: list[float]
    power_mean: list[float | None]
    power_min: list[float | None]
    power_max: list[float | None]
    temperature: list[float | None]
    samples: int
    bin_s: float


@dataclass
class CampaignData:
    campaign: dict[str, Any]
    records: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    versions: Counter[tuple[str | None, str | None]]
    phases: dict[int, dict[str, Any]]
    labels: dict[int, str] = field(default_factory=dict)  # experiment index -> what varies
    caption: str = ""


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
        campaign = {"id": c.id, "name": c.name, "status": c.status, "created": c.created_at,
                    "finished": c.finished_at, "seed": c.seed, "source": c.source, "imported_from": c.imported_from,
                    "structure": (c.spec or {}).get("structure"), "cycles": (c.spec or {}).get("cycles")}
        rows = s.execute(select(Run.id, Run.schema_version, Run.tool_version, Run.phases)
                         .where(Run.campaign_id == campaign_id)).all()
    versions = Counter((r.schema_version, r.tool_version) for r in rows)
    phases = {r.id: r.phases for r in rows if r.phases}
    records = run_records(campaign_id)
    summaries = experiment_summaries(campaign_id, records=records)
    data = CampaignData(campaign, records, summaries, versions, phases)
    configs = [e["experiment"] for e in summaries]
    varying = varying_keys(configs)
    for e in summaries:
        data.labels[e["experiment_index"]] = _label(flatten(e["experiment"]), varying) or "(base)"
    if configs:
        shared = flatten(configs[0])
        data.caption = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in shared.items()
                                if k not in varying and v is not None and not k.endswith((".kind", ".seed")))
    return data


def gpu_series(gpu_uuid: str, start: float, end: float, points: int = TIMELINE_POINTS) -> GpuSeries | None:
    """The GPU's samples between ``start`` and ``end`` (Unix s) binned by the database into at most ``points``
    bins: mean, min and max power, mean temperature. None when there is no sample."""
    from sqlalchemy import func, select

    from lem_shared.db.models import GpuSample
    from lem_shared.db.session import session_scope

    width = max((end - start) / points, 1e-3)
    epoch = func.extract("epoch", GpuSample.time)
    bucket = func.floor((epoch - start) / width).label("bucket")
    query = (select(bucket, func.avg(epoch), func.avg(GpuSample.power_w), func.min(GpuSample.power_w),
                    func.max(GpuSample.power_w), func.avg(GpuSample.temperature_c), func.count(),
                    func.min(GpuSample.host))
             .where(GpuSample.gpu_uuid == gpu_uuid,
                    GpuSample.time >= datetime.fromtimestamp(start, UTC),
                    GpuSample.time <= datetime.fromtimestamp(end, UTC))
             .group_by(bucket).order_by(bucket))
    with session_scope() as s:
        rows = s.execute(query).all()
    if not rows:
        return None

    def num(x: Any) -> float | None:
        return None if x is None else float(x)

    return GpuSeries(gpu_uuid=gpu_uuid, host=rows[0][7], t=[float(r[1]) for r in rows],
                     power_mean=[num(r[2]) for r in rows], power_min=[num(r[3]) for r in rows],
                     power_max=[num(r[4]) for r in rows], temperature=[num(r[5]) for r in rows],
                     samples=sum(int(r[6]) for r in rows), bin_s=width)


# --- figures ----------------------------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _svg(fig: Figure, key: str, title: str) -> str:
    """The figure as an inline ``<svg>`` whose ids are prefixed with ``key`` (several SVGs share one page)."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": key}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{key}-{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{key}-{m.group(1)})", text)
    text = re.sub(r'((?:xlink:)?href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{key}-{m.group(2)}"', text)
    text = re.sub(r'<svg ([^>]*)\bwidth="[^"]*" height="[^"]*"', r'<svg \1', text, count=1)
    return re.sub(r"<svg\b([^>]*)>", lambda m: f'<svg{m.group(1)} role="img" aria-label="{html.escape(title)}">'
                  f"<title>{html.escape(title)}</title>", text, count=1)


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s > 3 * 3600:
        return 3600.0, "h"
    if span_s > 15 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _with_gaps(t: list[float], *series: list[float | None]) -> tuple[list[float], list[list[float]]]:
    """Insert a NaN point where the samples stop for longer than 5 bins, so lines break over telemetry gaps."""
    steps = sorted(b - a for a, b in zip(t, t[1:], strict=False))
    limit = 5 * steps[len(steps) // 2] if steps else math.inf
    out_t: list[float] = []
    out: list[list[float]] = [[] for _ in series]
    for i, x in enumerate(t):
        if i and x - t[i - 1] > limit:
            out_t.append((x + t[i - 1]) / 2)
            for column in out:
                column.append(math.nan)
        out_t.append(x)
        for column, values in zip(out, series, strict=True):
            value = values[i]
            column.append(math.nan if value is None else value)
    return out_t, out


def timeline_figure(series: GpuSeries, windows: list[dict[str, Any]], origin: float, key: str,
                    labels: dict[int, str], deep_idle: tuple[float, float] | None,
                    span_s: tuple[float, float] | None = None) -> str:
    """Power (mean line, min-max band) and temperature of one GPU, its runs' windows shaded and labelled; the
    x axis covers ``span_s`` (Unix s; the samples' own span when None), so windows without samples show too."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    lo, hi = span_s or (series.t[0], series.t[-1])
    scale, unit = _time_unit(max(hi - lo, 1e-6))
    t, (mean, low, high, temperature) = _with_gaps(series.t, series.power_mean, series.power_min,
                                                   series.power_max, series.temperature)
    x = [(v - origin) / scale for v in t]
    fig = _figure(11, 4.4)
    ax = fig.add_subplot()
    experiments = sorted({w["experiment_index"] for w in windows})
    colour = {e: _WINDOW_COLORS[i % len(_WINDOW_COLORS)] for i, e in enumerate(experiments)}
    if deep_idle:
        ax.axvspan((deep_idle[0] - origin) / scale, (deep_idle[1] - origin) / scale, facecolor="#eeeeee",
                   edgecolor="#aaaaaa", lw=0, hatch="//", zorder=0).set_gid("deep-idle")
    for w in windows:
        span = ax.axvspan((w["start"] - origin) / scale, (w["end"] - origin) / scale,
                          color=colour[w["experiment_index"]], alpha=0.2, lw=0, zorder=0)
        span.set_gid(f"window-run{w['run_id']}")
    ax.fill_between(x, low, high, color=_POWER_COLOR, alpha=0.18, lw=0, zorder=1).set_gid("power-band")
    ax.plot(x, mean, color=_POWER_COLOR, lw=0.9, zorder=2)[0].set_gid("power")
    ax.set_xlabel(f"time since the first measurement window [{unit}]")
    ax.set_ylabel("power [W]", color=_POWER_COLOR)
    finite_high = [v for v in high if not math.isnan(v)]
    ax.set_ylim(0, (max(finite_high) if finite_high else 1) * 1.12)
    left, right = (lo - origin) / scale, (hi - origin) / scale
    ax.set_xlim(left, right)
    ax.grid(alpha=0.3)
    ax.tick_params(axis="y", colors=_POWER_COLOR)
    ax2 = ax.twinx()
    ax2.plot(x, temperature, color=_TEMPERATURE_COLOR, lw=1.1, zorder=3)[0].set_gid("temperature")
    finite_t = [v for v in temperature if not math.isnan(v)]
    if finite_t:
        ax2.set_ylim(min(finite_t) - 5, max(finite_t) + 5)
    ax2.set_ylabel("temperature [°C]", color=_TEMPERATURE_COLOR)
    ax2.tick_params(axis="y", colors=_TEMPERATURE_COLOR)

    # Window labels above the axes: horizontal while they fit, else vertical, skipping those that would touch.
    axis_pt = 11 * 72 * 0.8
    centres = [((w["start"] + w["end"]) / 2 - origin) / scale for w in windows]
    gaps = [b - a for a, b in zip(centres, centres[1:], strict=False)]
    per_pt = (right - left) / axis_pt if right > left else 1.0
    horizontal = not gaps or min(gaps) / per_pt >= 34
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    last = -math.inf
    for w, c in zip(windows, centres, strict=True):
        if (c - last) / per_pt < (34 if horizontal else 9) or not left <= c <= right:
            continue
        last = c
        ax.text(c, 1.01, f"e{w['experiment_index']}·c{w['cycle']}", transform=transform, ha="center",
                va="bottom", fontsize=7.5 if horizontal else 6.5, rotation=0 if horizontal else 90,
                color=colour[w["experiment_index"]])
    handles = [Line2D([], [], color=_POWER_COLOR, lw=1, label="power (bin mean)"),
               Patch(color=_POWER_COLOR, alpha=0.18, label="power (bin min–max)"),
               Line2D([], [], color=_TEMPERATURE_COLOR, lw=1.1, label="temperature")]
    if deep_idle:
        handles.append(Patch(facecolor="#eeeeee", edgecolor="#aaaaaa", hatch="//", label="deep-idle baseline"))
    if len(experiments) <= 12:
        handles += [Patch(color=colour[e], alpha=0.35, label=f"e{e}: {labels.get(e, '')}"[:48])
                    for e in experiments]
    else:
        handles.append(Patch(color="#888888", alpha=0.3, label="measurement window (colour per experiment)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    title = f"{series.gpu_uuid}" + (f" on {series.host}" if series.host else "")
    ax.set_title(title, fontsize=10, pad=34 if horizontal else 44)
    return _svg(fig, key, f"Power and temperature of {title} with measurement windows shaded")


def _annotate(ax: Axes, points: list[tuple[float, float, str, bool, bool]]) -> None:
    """Label each (x, y, text, bold, left) point above it, to the right (to the left where ``left``); labels of
    points that fall within a label's size of one another are merged into one ("e2, e3")."""
    ax.autoscale_view()
    where = ax.transData.transform([(p[0], p[1]) for p in points]) if points else []
    groups: list[list[int]] = []
    for i, (px, py) in enumerate(where):
        for g in groups:
            gx, gy = where[g[0]]
            if abs(px - gx) < 14 and abs(py - gy) < 9:
                g.append(i)
                break
        else:
            groups.append([i])
    for g in groups:
        x, y = points[g[0]][0], points[g[0]][1]
        bold = any(points[i][3] for i in g)
        left = all(points[i][4] for i in g)
        ax.annotate(", ".join(points[i][2] for i in g), (x, y), xytext=(-7 if left else 7, 5),
                    textcoords="offset points", ha="right" if left else "left",
                    fontsize=8 if bold else 7, fontweight="bold" if bold else "normal",
                    color="#222222" if bold else "#555555")


def _plain_log_ticks(ax: Axes, axis: str) -> None:
    """Log-axis ticks as plain numbers (0.05, 0.1, 0.2, 0.5, 1 …) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(LogLocator(subs=(2, 5)))
    target.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _log_if_wide(ax: Axes, axis: str, values: list[float], ratio: float = 8.0) -> bool:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) >= ratio:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        _plain_log_ticks(ax, axis)
        return True
    return False


def _series_style(series: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(colour, marker) per (backend, other-values) series: colour by backend, marker by the rest."""
    others: dict[str, int] = {}
    style = {}
    extra = iter(_OTHER_COLORS * 4)
    backend_colour: dict[str, str] = {}
    for backend, rest in series:
        if backend not in backend_colour:
            backend_colour[backend] = _BACKEND_COLORS.get(backend) or next(extra)
        marker = _MARKERS[others.setdefault(rest, len(others)) % len(_MARKERS)]
        style[(backend, rest)] = (backend_colour[backend], marker)
    return style


@dataclass
class Point:
    experiment_index: int
    backend: str
    x: Any
    rest: str
    mean: float
    low: float | None
    high: float | None


def energy_figure(points: list[Point], sweep: str | None, key: str) -> str:
    """Mean J/token per experiment with its 95 % CI, against the swept parameter, one series per backend (and per
    combination of whatever else varies)."""
    fig = _figure(11, 4.8)
    ax = fig.add_subplot()
    series_keys = list(dict.fromkeys((p.backend, p.rest) for p in points))
    style = _series_style(series_keys)
    numeric = sweep is not None
    if numeric:
        log_x = _log_if_wide(ax, "x", [float(p.x) for p in points])
        xs = sorted({float(p.x) for p in points})
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
    else:
        log_x = False
        categories = list(dict.fromkeys(str(p.x) for p in points))
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0, ha="right"
                      if len(categories) > 4 else "center")
    _log_if_wide(ax, "y", [p.mean for p in points], ratio=20)
    n = len(series_keys)
    no_ci = False
    labelled: list[tuple[float, float, str, bool, bool]] = []
    ax.margins(x=0.06, y=0.08)
    for i, sk in enumerate(series_keys):
        mine = [p for p in points if (p.backend, p.rest) == sk]
        dodge = (i - (n - 1) / 2) * (0.035 if log_x else 0.08)
        if numeric:
            mine.sort(key=lambda p: float(p.x))
            xs_ = [float(p.x) * 10 ** dodge if log_x else float(p.x) for p in mine]
            if not log_x and len(xs) > 1:
                xs_ = [v + dodge * min(b - a for a, b in zip(xs, xs[1:], strict=False)) for v in xs_]
        else:
            xs_ = [categories.index(str(p.x)) + dodge for p in mine]
        colour, marker = style[sk]
        label = sk[0] + (f" · {sk[1]}" if sk[1] else "")
        ax.plot(xs_, [p.mean for p in mine], color=colour, lw=1, alpha=0.6 if numeric else 0)
        ax.plot([], [], marker, color=colour, ls="-" if numeric else "none", label=label)
        for x, p in zip(xs_, mine, strict=True):
            if p.low is not None and p.high is not None:
                bars = ax.errorbar([x], [p.mean], yerr=[[p.mean - p.low], [p.high - p.mean]], fmt=marker,
                                   color=colour, capsize=4, ms=6, lw=1.2)
                bars.lines[0].set_gid(f"e{p.experiment_index}")
            else:
                no_ci = True
                ax.plot([x], [p.mean], marker, mfc="white", color=colour, ms=6)[0].set_gid(
                    f"e{p.experiment_index}")
        labelled += [(x, p.mean, f"e{p.experiment_index}", False, n > 1 and i < (n - 1) / 2)
                     for x, p in zip(xs_, mine, strict=True)]
    if no_ci:
        ax.plot([], [], "o", mfc="white", color="#555555", ls="none", label="no CI (< 2 cycles)")
    _annotate(ax, labelled)
    ax.set_xlabel(sweep or "experiment")
    ax.set_ylabel("energy per output token [J/token]")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("J/token (mean over done cycles, 95 % bootstrap CI) per backend", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _svg(fig, key, f"J/token against {sweep or 'experiment'} with 95 % CI error bars per backend")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower is better on both axes), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


@dataclass
class ParetoPoint:
    experiment_index: int
    backend: str
    latency: float
    latency_low: float | None
    latency_high: float | None
    jpt: float
    jpt_low: float | None
    jpt_high: float | None


def pareto_figure(points: list[ParetoPoint], key: str) -> tuple[str, list[int]]:
    fig = _figure(11, 4.8)
    ax = fig.add_subplot()
    front = pareto_front([(p.latency, p.jpt) for p in points])
    _log_if_wide(ax, "x", [p.latency for p in points], ratio=20)
    _log_if_wide(ax, "y", [p.jpt for p in points], ratio=20)
    backends = list(dict.fromkeys(p.backend for p in points))
    style = _series_style([(b, "") for b in backends])
    for b in backends:
        mine = [p for p in points if p.backend == b]
        colour, _ = style[(b, "")]

        def err(v: float, lo: float | None, hi: float | None) -> tuple[float, float]:
            return (v - lo, hi - v) if lo is not None and hi is not None else (0.0, 0.0)

        xerr = list(zip(*[err(p.latency, p.latency_low, p.latency_high) for p in mine], strict=True))
        yerr = list(zip(*[err(p.jpt, p.jpt_low, p.jpt_high) for p in mine], strict=True))
        ax.errorbar([p.latency for p in mine], [p.jpt for p in mine], xerr=xerr, yerr=yerr, fmt="o", color=colour,
                    ms=6, capsize=3, lw=0.9, alpha=0.85, label=b)
    fx = [points[i].latency for i in front]
    fy = [points[i].jpt for i in front]
    ax.plot(fx, fy, color="#222222", lw=1.4, ls="--", drawstyle="steps-post", zorder=4,
            label="Pareto front")[0].set_gid("front")
    ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="#222222", lw=1.4, zorder=5)
    on_front = set(front)
    ax.margins(0.08)
    _annotate(ax, [(p.latency, p.jpt, f"e{p.experiment_index}", i in on_front, False) for i, p in enumerate(points)])
    ax.set_xlabel("mean per-request latency [s]")
    ax.set_ylabel("energy per output token [J/token]")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("J/token against latency: lower-left is better; ringed points are on the Pareto front",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _svg(fig, key, "Pareto front of J/token against mean per-request latency"), \
        [points[i].experiment_index for i in front]


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
    rows = [("status", c["status"]), ("created", _when(c["created"])), ("finished", _when(c["finished"])),
            ("experiments", f"{len(data.summaries)} ({', '.join(backends) or 'no backend'})"),
            ("runs", f"{len(data.records)}: {runs}"),
            ("swept parameter", sweep or "none (no numeric parameter varies)"),
            ("what else varies", ", ".join(others) or "nothing"),
            ("fixed", data.caption or "–"),
            ("hosts / devices", f"{', '.join(hosts) or '–'} / {', '.join(devices) or '–'}"),
            ("GPUs", ", ".join(gpus) or "none (no GPU telemetry)"),
            ("schema version", ", ".join(schema)), ("tool version", ", ".join(tools))]
    if c["structure"] or c["seed"] is not None:
        seed = f" (seed {c['seed']})" if c["seed"] is not None else ""
        rows.append(("order", f"{c['structure'] or 'default'}{seed}"))
    if c["source"] != "lem":
        rows.append(("source", f"{c['source']}: {c['imported_from'] or ''}"))
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return (f'<section id="campaign"><h1>Campaign {c["id"]}: {_e(c["name"])}</h1>'
            f'<p class="sub">LLenergyMeasure results report</p><dl class="meta">{meta}</dl></section>')


def _timeline_section(data: CampaignData) -> str:
    parts = ['<section id="timeline"><h2>Power and temperature over time</h2>']
    windows_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data.records:
        if r["gpu_uuid"] and r["window_start"] and r["window_end"]:
            windows_of[r["gpu_uuid"]].append({
                "experiment_index": r["experiment_index"], "cycle": r["cycle"],
                "start": datetime.fromisoformat(r["window_start"]).timestamp(),
                "end": datetime.fromisoformat(r["window_end"]).timestamp(), "run_id": r["run_id"]})
    if not windows_of:
        devices = sorted({r["device"] for r in data.records if r["device"]})
        why = f"the runs ran on {', '.join(devices)}" if devices else "no run has a measurement window yet"
        parts.append(_note("timeline", f"No GPU telemetry for this campaign ({why}; power and temperature come "
                                       "from NVML on GPUs only): no timeline."))
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
            parts.append(_note("timeline", f"No telemetry stored for {gpu} between the campaign's first and last "
                                           "measurement window (was lem-telemetry running on its host?)."))
            continue
        svg = timeline_figure(series, windows, first, f"tl{n}", data.labels, deep, (lo - pad, last + pad))
        hatched = ", hatched: the deep-idle baseline" if deep else ""
        parts.append(f'<figure id="plot-timeline-{n}" data-plot="timeline" data-gpu="{_e(gpu)}">{svg}'
                     f"<figcaption>{_e(gpu)}: {series.samples:,} samples averaged into {len(series.t):,} bins of "
                     f"{series.bin_s:.2g} s (the band: each bin's min–max power); shaded: the measurement "
                     f"window of each run (e&lt;experiment&gt;·c&lt;cycle&gt;){hatched}.</figcaption>"
                     "</figure>")
    parts.append("</section>")
    return "".join(parts)


def _energy_section(data: CampaignData, sweep: str | None, others: list[str]) -> str:
    parts = ['<section id="energy"><h2>J/token against the swept parameter</h2>']
    points: list[Point] = []
    missing = []
    for e in data.summaries:
        m = e["metrics"]["j_per_token"]
        flat = flatten(e["experiment"])
        x = flat.get(sweep) if sweep else (_label(flat, others) or e["backend"])
        if m["mean"] is None or (sweep and x is None):
            missing.append(f"e{e['experiment_index']} ({m['reason'] or 'no ' + str(sweep)})")
            continue
        points.append(Point(e["experiment_index"], e["backend"], x, _label(flat, others) if sweep else "",
                            m["mean"], m["ci_low"], m["ci_high"]))
    if not points:
        notes = _energy_notes(data.records)
        parts.append(_note("energy", "No J/token figures: no done run has an energy figure"
                                     + (f" ({notes})" if notes else "") + ", so there is nothing to plot."))
    else:
        svg = energy_figure(points, sweep, "jpt")
        what = (f"x: <code>{_e(sweep)}</code>" if sweep else "no numeric parameter is swept; one point per "
                "experiment") + (f"; also varying: {_e(', '.join(others))} (one series each)" if others else "")
        parts.append(f'<figure id="plot-j-per-token" data-plot="j-per-token">{svg}<figcaption>{what}. Error bars: '
                     "95 % percentile-bootstrap CI over done cycles (10,000 resamples, seed 0); hollow markers: "
                     "fewer than 2 cycles, no interval.</figcaption></figure>")
    if missing and points:
        parts.append(_note("energy-missing", "Not plotted: " + "; ".join(missing) + "."))
    parts.append("</section>")
    return "".join(parts)


def _pareto_section(data: CampaignData) -> str:
    from lem_shared.stats import bootstrap_ci

    parts = ['<section id="pareto"><h2>Pareto front: J/token against latency</h2>']
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in data.records:
        if r["status"] == "done":
            by_experiment[r["experiment_index"]].append(r)
    points = []
    for e in data.summaries:
        m = e["metrics"]["j_per_token"]
        latency = bootstrap_ci([r["latency_mean_s"] for r in by_experiment[e["experiment_index"]]
                                if r["latency_mean_s"] is not None])
        if m["mean"] is None or latency.estimate is None:
            continue
        points.append(ParetoPoint(e["experiment_index"], e["backend"], latency.estimate, latency.low,
                                  latency.high, m["mean"], m["ci_low"], m["ci_high"]))
    if not points:
        notes = _energy_notes(data.records)
        parts.append(_note("pareto", "No Pareto front: it needs experiments with both J/token and latency"
                                     + (f" ({notes})" if notes else "") + "."))
    else:
        svg, front = pareto_figure(points, "pareto")
        listed = "; ".join(f"e{i}: {_e(data.labels.get(i, ''))}" for i in front)
        parts.append(f'<figure id="plot-pareto" data-plot="pareto" data-front="{" ".join(map(str, front))}">{svg}'
                     f"<figcaption>Per experiment: mean over done cycles with 95 % bootstrap CIs on both axes; "
                     f"latency is the mean per-request latency. On the front: {listed}.</figcaption></figure>")
    parts.append("</section>")
    return "".join(parts)


def _experiments_section(data: CampaignData) -> str:
    from lem_shared.stats import ci_text

    rows = []
    for e in data.summaries:
        m = e["metrics"]
        notes = [*e["warnings"], *sorted({v["reason"] for v in m.values() if v["reason"]})]
        label = _e(data.labels.get(e["experiment_index"]))
        rows.append(f"<tr><td>e{e['experiment_index']}</td><td class=label>{label}</td>"
                    f"<td>{_e(e['backend'])}</td><td class=num>{e['runs_done']}/{e['runs']}</td>"
                    f"<td class=num>{ci_text(m['j_per_token'], '.2f', 1000)}</td>"
                    f"<td class=num>{ci_text(m['tokens_per_s'], '.1f')}</td>"
                    f"<td class=num>{ci_text(m['energy_j'], '.1f')}</td>"
                    f"<td>{_e('; '.join(notes))}</td></tr>")
    return ('<section id="experiments"><h2>Experiments</h2><table id="experiments-table"><thead><tr><th>exp</th>'
            "<th>experiment</th><th>backend</th><th>done</th><th>mJ/token [95 % CI]</th>"
            "<th>tokens/s [95 % CI]</th><th>energy J [95 % CI]</th><th>notes</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></section>")


def _validity_section(data: CampaignData) -> str:
    rows = []
    for r in data.records:
        flagged = [c for c in (r["checks"] or []) if c.get("status") in ("fail", "warning")]
        items = "".join(f'<li class="{_e(c["status"])}"><b>{_e(c["status"])}</b> {_e(c.get("name"))}: '
                        f'{_e(c.get("message"))}</li>' for c in flagged)
        if not flagged and r["checks"]:
            checks = f"all {len(r['checks'])} passed"
        elif not flagged:
            checks = _e(r["error"] or r["energy_note"] or "no checks (not finalised)")
        else:
            checks = f'<ul class="checks">{items}</ul>'
        verdict = r["verdict"] or "none"
        rows.append(f'<tr class="{_e(verdict)}" data-run="{r["run_id"]}"><td>e{r["experiment_index"]}</td>'
                    f"<td class=label>{_e(data.labels.get(r['experiment_index']))}</td><td class=num>{r['cycle']}</td>"
                    f"<td>{_e(r['status'])}</td><td class=verdict>{_e(r['verdict'] or '–')}</td>"
                    f"<td class=num>{_fmt(r['j_per_token'], '.2f', 1000)}</td><td>{checks}</td></tr>")
    counts = Counter(r["verdict"] for r in data.records if r["verdict"])
    unjudged = sum(1 for r in data.records if not r["verdict"])
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "No run has a verdict"
    if unjudged and counts:
        summary += f"; {unjudged} run{'s' if unjudged > 1 else ''} without a verdict (not done or no energy)"
    elif unjudged:
        summary += " (no run is done with an energy figure)"
    return (f'<section id="validity"><h2>Validity</h2><p>{_e(summary)}.</p><table id="validity-table"><thead><tr>'
            "<th>exp</th><th>experiment</th><th>cycle</th><th>status</th><th>verdict</th><th>mJ/token</th>"
            "<th>failed / warned checks</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")


def render_report(campaign_id: int, path: Path) -> Path:
    """Write the campaign's HTML report to ``path`` and return it; ``UnknownCampaign`` when there is none. The
    page appears whole or not at all (``safe_write``): ``BadTarget`` for a target that is not a regular file or
    whose folder does not exist (checked first), ``WriteFailed`` when writing fails (what was there is kept)."""
    from lem_planner.safe_write import check_target, write_atomically
    from lem_shared import TOOL_VERSION

    check_target(path)
    data = _load(campaign_id)
    sweep, others = swept_parameter([e["experiment"] for e in data.summaries])
    body = "".join([_header(data, sweep, others), _timeline_section(data), _energy_section(data, sweep, others),
                    _pareto_section(data), _experiments_section(data), _validity_section(data)])
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>lem report: campaign '
            f'{campaign_id} ({_e(data.campaign["name"])})</title><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body><main>{body}'
            f"<footer>Generated by {_e(TOOL_VERSION)} at {generated} with <code>lem results report "
            f"{campaign_id}</code>.</footer></main></body></html>\n")
    write_atomically(path, lambda f: f.write(page.encode("utf-8")))
    return path


# --- the command --------------------------------------------------------------------------------------------------

def results_report(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write (its folder must exist).")],
) -> None:
    """Write a self-contained HTML report of CAMPAIGN_ID: power and temperature over time with the measurement
    windows shaded, J/token against the swept parameter with 95 % CIs per backend, the Pareto front of J/token
    against latency, and the validity of every run. The page appears whole or not at all: a failed write (exit 1)
    leaves what was there; a target that is not a regular file, or in a folder that does not exist, is refused
    (exit 2)."""
    from lem_planner.cli import _check_campaign_id, _fail
    from lem_planner.safe_write import OutputError, check_target

    try:
        check_target(output)
        render_report(_check_campaign_id(campaign_id), output)
    except OutputError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    except UnknownCampaign:
        raise _fail(f"no campaign {campaign_id}; `lem campaign list` shows the ones there are",
                    EXIT_BAD_INPUT) from None
    Console(width=140).print(f"wrote {output} ({output.stat().st_size / 1024:.0f} KiB)", highlight=False,
                             markup=False)
