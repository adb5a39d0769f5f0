"""The figures of ``lem results report``, drawn once each by matplotlib (through ``Figure``, never pyplot, so no
GUI backend is loaded): the page inlines each one's SVG and ``FigureFiles`` writes it as PNG and SVG beside it.

Only light modules are imported at the top; matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import html
import io
import math
import re
from dataclasses import dataclass, field
from operator import methodcaller
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_BACKEND_COLORS = {"pytorch": "#1f77b4", "vllm": "#ff7f0e", "trtllm": "#2ca02c"}
_OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_WINDOW_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
_POWER_COLOR, _TEMPERATURE_COLOR = "#1f4e9c", "#c0392b"


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


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


@dataclass
class Drawn:
    """A finished figure and the one-line description it gets as its SVG title (and alt text)."""

    fig: Figure
    title: str


def _svg(fig: Figure, key: str, title: str) -> str:
    """The figure as an inline ``<svg>`` whose ids are prefixed with ``key`` (several SVGs share one page)."""
    text = _svg_file(fig, key).decode("utf-8")
    text = text[text.index("<svg") :]
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{key}-{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{key}-{m.group(1)})", text)
    text = re.sub(r'((?:xlink:)?href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{key}-{m.group(2)}"', text)
    text = re.sub(r'<svg ([^>]*)\bwidth="[^"]*" height="[^"]*"', r"<svg \1", text, count=1)
    return re.sub(
        r"<svg\b([^>]*)>",
        lambda m: f'<svg{m.group(1)} role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>',
        text,
        count=1,
    )


def _svg_file(fig: Figure, key: str) -> bytes:
    """The figure as a standalone SVG document (text as text, no date: the same data gives the same file)."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": key}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _png_file(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, facecolor="white")
    return buffer.getvalue()


FIGURE_FILE_PREFIX = "plot-"


@dataclass
class FigureFiles:
    """Every figure of one page: ``inline`` gives the SVG for the HTML and keeps the PNG and SVG files, named after
    the figure's id (``plot-...``), that ``write`` puts in a folder."""

    files: dict[str, bytes] = field(default_factory=dict)  # file name -> content

    def inline(self, drawn: Drawn, figure_id: str, key: str) -> str:
        assert figure_id.startswith(FIGURE_FILE_PREFIX), figure_id
        self.files[f"{figure_id}.svg"] = _svg_file(drawn.fig, key)
        self.files[f"{figure_id}.png"] = _png_file(drawn.fig)
        return _svg(drawn.fig, key, drawn.title)

    def write(self, folder: Path) -> list[Path]:
        """Write each file whole (``safe_write``) into ``folder`` (made when missing; its parent must exist) and
        remove the ``plot-*.png|svg`` an earlier report left there that this one has not; the paths written."""
        from lem_planner.safe_write import BadTarget, write_atomically

        if folder.exists() and not folder.is_dir():
            raise BadTarget(f"cannot write the figures into {folder}: it is not a folder")
        if not folder.parent.is_dir():
            raise BadTarget(f"cannot write the figures into {folder}: the folder {folder.parent} does not exist")
        folder.mkdir(exist_ok=True)
        written = []
        for name, content in self.files.items():
            write_atomically(folder / name, methodcaller("write", content))
            written.append(folder / name)
        for stale in folder.glob(f"{FIGURE_FILE_PREFIX}*"):
            if stale.suffix in (".png", ".svg") and stale.name not in self.files and stale.is_file():
                stale.unlink()
        return written


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


def timeline_figure(
    series: GpuSeries,
    windows: list[dict[str, Any]],
    origin: float,
    labels: dict[int, str],
    deep_idle: tuple[float, float] | None,
    span_s: tuple[float, float] | None = None,
) -> Drawn:
    """Power (mean line, min-max band) and temperature of one GPU, its runs' windows shaded and labelled; the
    x axis covers ``span_s`` (Unix s; the samples' own span when None), so windows without samples show too."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    lo, hi = span_s or (series.t[0], series.t[-1])
    scale, unit = _time_unit(max(hi - lo, 1e-6))
    t, (mean, low, high, temperature) = _with_gaps(
        series.t, series.power_mean, series.power_min, series.power_max, series.temperature
    )
    x = [(v - origin) / scale for v in t]
    fig = _figure(11, 4.4)
    ax = fig.add_subplot()
    experiments = sorted({w["experiment_index"] for w in windows})
    colour = {e: _WINDOW_COLORS[i % len(_WINDOW_COLORS)] for i, e in enumerate(experiments)}
    if deep_idle:
        ax.axvspan(
            (deep_idle[0] - origin) / scale,
            (deep_idle[1] - origin) / scale,
            facecolor="#eeeeee",
            edgecolor="#aaaaaa",
            lw=0,
            hatch="//",
            zorder=0,
        ).set_gid("deep-idle")
    for w in windows:
        span = ax.axvspan(
            (w["start"] - origin) / scale,
            (w["end"] - origin) / scale,
            color=colour[w["experiment_index"]],
            alpha=0.2,
            lw=0,
            zorder=0,
        )
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
        ax.text(
            c,
            1.01,
            f"e{w['experiment_index']}·c{w['cycle']}",
            transform=transform,
            ha="center",
            va="bottom",
            fontsize=7.5 if horizontal else 6.5,
            rotation=0 if horizontal else 90,
            color=colour[w["experiment_index"]],
        )
    handles = [
        Line2D([], [], color=_POWER_COLOR, lw=1, label="power (bin mean)"),
        Patch(color=_POWER_COLOR, alpha=0.18, label="power (bin min–max)"),
        Line2D([], [], color=_TEMPERATURE_COLOR, lw=1.1, label="temperature"),
    ]
    if deep_idle:
        handles.append(Patch(facecolor="#eeeeee", edgecolor="#aaaaaa", hatch="//", label="deep-idle baseline"))
    if len(experiments) <= 12:
        handles += [Patch(color=colour[e], alpha=0.35, label=f"e{e}: {labels.get(e, '')}"[:48]) for e in experiments]
    else:
        handles.append(Patch(color="#888888", alpha=0.3, label="measurement window (colour per experiment)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    title = f"{series.gpu_uuid}" + (f" on {series.host}" if series.host else "")
    ax.set_title(title, fontsize=10, pad=34 if horizontal else 44)
    return Drawn(fig, f"Power and temperature of {title} with measurement windows shaded")


def _annotate(ax: Axes, points: list[tuple[float, float, str, bool, bool]]) -> None:
    """Label each (x, y, text, bold, left) point above it, to the right (to the left where ``left``); labels of
    points that fall within a label's size of one another are merged into one ("e2, e3")."""
    ax.autoscale_view()
    if not points:
        return
    where = ax.transData.transform([(p[0], p[1]) for p in points])
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
        ax.annotate(
            ", ".join(points[i][2] for i in g),
            (x, y),
            xytext=(-7 if left else 7, 5),
            textcoords="offset points",
            ha="right" if left else "left",
            fontsize=8 if bold else 7,
            fontweight="bold" if bold else "normal",
            color="#222222" if bold else "#555555",
        )


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
    """One experiment's mean over its done cycles with the 95 % CI (None under 2 cycles); ``spread``: a second
    figure of the same experiment drawn dashed (TTFT p90 beside p50)."""

    experiment_index: int
    backend: str
    x: Any
    rest: str
    mean: float
    low: float | None
    high: float | None
    spread: float | None = None


def sweep_figure(
    points: list[Point], sweep: str | None, ylabel: str, title: str, spread_label: str | None = None
) -> Drawn:
    """The mean of a metric per experiment with its 95 % CI against the swept parameter, one series per backend
    (and per combination of whatever else varies); with ``spread_label``, each point's ``spread`` dashed."""
    fig = _figure(11, 4.6)
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
        ax.set_xticks(
            range(len(categories)),
            categories,
            rotation=20 if len(categories) > 4 else 0,
            ha="right" if len(categories) > 4 else "center",
        )
    spreads = [p.spread for p in points if p.spread is not None] if spread_label else []
    _log_if_wide(ax, "y", [p.mean for p in points] + spreads, ratio=20)
    n = len(series_keys)
    no_ci = False
    labelled: list[tuple[float, float, str, bool, bool]] = []
    ax.margins(x=0.06, y=0.08)
    for i, sk in enumerate(series_keys):
        mine = [p for p in points if (p.backend, p.rest) == sk]
        dodge = (i - (n - 1) / 2) * (0.035 if log_x else 0.08)
        if numeric:
            mine.sort(key=lambda p: float(p.x))
            xs_ = [float(p.x) * 10**dodge if log_x else float(p.x) for p in mine]
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
                bars = ax.errorbar(
                    [x],
                    [p.mean],
                    yerr=[[p.mean - p.low], [p.high - p.mean]],
                    fmt=marker,
                    color=colour,
                    capsize=4,
                    ms=6,
                    lw=1.2,
                )
                bars.lines[0].set_gid(f"e{p.experiment_index}")
            else:
                no_ci = True
                ax.plot([x], [p.mean], marker, mfc="white", color=colour, ms=6)[0].set_gid(f"e{p.experiment_index}")
        with_spread = [(x, p.spread) for x, p in zip(xs_, mine, strict=True) if spread_label and p.spread is not None]
        if with_spread:
            ax.plot(
                [x for x, _ in with_spread],
                [spread for _, spread in with_spread],
                marker,
                mfc="white",
                color=colour,
                ms=4,
                lw=0.9,
                ls="--" if numeric else "none",
                alpha=0.8,
            )[0].set_gid(f"spread-{i}")
        labelled += [
            (x, p.mean, f"e{p.experiment_index}", False, n > 1 and i < (n - 1) / 2)
            for x, p in zip(xs_, mine, strict=True)
        ]
    if no_ci:
        ax.plot([], [], "o", mfc="white", color="#555555", ls="none", label="no CI (< 2 cycles)")
    if spreads:
        ax.plot([], [], "o", mfc="white", ms=4, color="#555555", ls="--", label=spread_label)
    _annotate(ax, labelled)
    ax.set_xlabel(sweep or "experiment")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"{title} (mean over done cycles, 95 % bootstrap CI) per backend", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return Drawn(fig, f"{title} against {sweep or 'experiment'} with 95 % CI error bars per backend")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower is better on both axes), by the first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


@dataclass
class ParetoPoint:
    """One experiment: x (latency or tokens/s) and J/token, each the mean over done cycles with its 95 % CI."""

    experiment_index: int
    backend: str
    x: float
    x_low: float | None
    x_high: float | None
    jpt: float
    jpt_low: float | None
    jpt_high: float | None


def pareto_figure(points: list[ParetoPoint], xlabel: str, higher_x_is_better: bool) -> tuple[Drawn, list[int]]:
    """J/token against ``xlabel`` per experiment with CIs on both axes, the Pareto front drawn and ringed; the
    experiments on the front (best x first)."""
    fig = _figure(11, 4.8)
    ax = fig.add_subplot()
    sign = -1 if higher_x_is_better else 1
    front = pareto_front([(sign * p.x, p.jpt) for p in points])
    _log_if_wide(ax, "x", [p.x for p in points], ratio=20)
    _log_if_wide(ax, "y", [p.jpt for p in points], ratio=20)
    backends = list(dict.fromkeys(p.backend for p in points))
    style = _series_style([(b, "") for b in backends])

    def err(v: float, lo: float | None, hi: float | None) -> tuple[float, float]:
        return (v - lo, hi - v) if lo is not None and hi is not None else (0.0, 0.0)

    for b in backends:
        mine = [p for p in points if p.backend == b]
        colour, _ = style[(b, "")]
        xerr = list(zip(*[err(p.x, p.x_low, p.x_high) for p in mine], strict=True))
        yerr = list(zip(*[err(p.jpt, p.jpt_low, p.jpt_high) for p in mine], strict=True))
        bars = ax.errorbar(
            [p.x for p in mine],
            [p.jpt for p in mine],
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            color=colour,
            ms=6,
            capsize=3,
            lw=0.9,
            alpha=0.85,
            label=b,
        )
        bars.lines[0].set_gid(f"points-{b}")
    on_x = sorted(front, key=lambda i: points[i].x)
    ax.plot(
        [points[i].x for i in on_x],
        [points[i].jpt for i in on_x],
        color="#222222",
        lw=1.4,
        ls="--",
        drawstyle="steps-pre" if higher_x_is_better else "steps-post",
        zorder=4,
        label="Pareto front",
    )[0].set_gid("front")
    ax.scatter(
        [points[i].x for i in front],
        [points[i].jpt for i in front],
        s=150,
        facecolors="none",
        edgecolors="#222222",
        lw=1.4,
        zorder=5,
    )
    on_front = set(front)
    ax.margins(0.08)
    _annotate(ax, [(p.x, p.jpt, f"e{p.experiment_index}", i in on_front, False) for i, p in enumerate(points)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("energy per output token [J/token]")
    ax.grid(alpha=0.3, which="both")
    corner = "lower-right" if higher_x_is_better else "lower-left"
    ax.set_title(
        f"J/token against {xlabel.split(' [')[0]}: {corner} is better; ringed points are on the Pareto front",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="best")
    return Drawn(fig, f"Pareto front of J/token against {xlabel.split(' [')[0]}"), [
        points[i].experiment_index for i in front
    ]


@dataclass
class PhaseBar:
    """One experiment's prefill and decode figure (mean over done cycles) with 95 % CIs (None under 2)."""

    label: str
    prefill: float | None
    prefill_ci: tuple[float, float] | None
    decode: float | None
    decode_ci: tuple[float, float] | None


def phase_figure(panels: list[tuple[str, list[PhaseBar]]]) -> Drawn:
    """Grouped bars, prefill beside decode per experiment, one panel per (y label, bars)."""
    fig = _figure(11, 3.9)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = {"prefill": "#5b8cc8", "decode": "#e08a3c"}
    for n, (ax, (ylabel, bars)) in enumerate(zip(axes, panels, strict=True)):
        for k, phase in enumerate(("prefill", "decode")):
            xs = [i + (k - 0.5) * 0.38 for i in range(len(bars))]
            heights = [getattr(b, phase) or 0.0 for b in bars]
            drawn = ax.bar(xs, heights, width=0.38, color=colours[phase], label=phase if n == 0 else None)
            for i, rect in enumerate(drawn):
                rect.set_gid(f"{phase}-{n}-{i}")
            for x, h, ci in zip(xs, heights, [getattr(b, f"{phase}_ci") for b in bars], strict=True):
                if ci:
                    ax.errorbar([x], [h], yerr=[[h - ci[0]], [ci[1] - h]], color="#222222", capsize=3, lw=1)
        ax.set_xticks(
            range(len(bars)),
            [b.label for b in bars],
            rotation=20 if len(bars) > 4 else 0,
            ha="right" if len(bars) > 4 else "center",
            fontsize=8,
        )
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(
        "Prefill and decode per prompt (measurement.phase_split; decode = full window - prefill-only window)",
        fontsize=10,
    )
    return Drawn(fig, "Prefill against decode per prompt: " + ", ".join(p[0] for p in panels))


@dataclass
class IdleActiveBar:
    """One experiment's J/token split into idle (the baseline power over the window) and active (the rest)."""

    label: str
    idle: float
    active: float


def idle_active_figure(bars: list[IdleActiveBar]) -> Drawn:
    """Stacked bars per experiment, idle below and active above: in J/token (left) and as shares (right, where
    experiments whose J/token differ many times over stay readable)."""
    fig = _figure(11, 4.2)
    absolute, share = fig.subplots(1, 2, width_ratios=(3, 2))
    xs = list(range(len(bars)))
    totals = [b.idle + b.active for b in bars]
    for ax, scale in ((absolute, [1.0] * len(bars)), (share, [100 / t if t > 0 else 0.0 for t in totals])):
        kind = "share" if ax is share else "jpt"
        idle = ax.bar(
            xs,
            [b.idle * k for b, k in zip(bars, scale, strict=True)],
            color="#b9c2cf",
            label="idle (baseline power × window)",
        )
        active = ax.bar(
            xs,
            [b.active * k for b, k in zip(bars, scale, strict=True)],
            bottom=[b.idle * k for b, k in zip(bars, scale, strict=True)],
            color="#d9534f",
            label="active (measured - idle)",
        )
        for x, rect_idle, rect_active in zip(xs, idle, active, strict=True):
            rect_idle.set_gid(f"idle-{kind}-{x}" if kind == "share" else f"idle-{x}")
            rect_active.set_gid(f"active-{kind}-{x}" if kind == "share" else f"active-{x}")
        ax.set_xticks(
            xs,
            [b.label for b in bars],
            rotation=20 if len(bars) > 6 else 0,
            ha="right" if len(bars) > 6 else "center",
            fontsize=7,
        )
        ax.grid(alpha=0.3, axis="y")
    for x, b, total in zip(xs, bars, totals, strict=True):
        if total > 0:
            absolute.annotate(
                f"{total:.3g}",
                (x, total),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7.5,
                color="#444444",
            )
            share.annotate(
                f"{b.idle / total:.0%} idle",
                (x, 100),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7.5,
                color="#444444",
            )
    if any(b.active < 0 for b in bars):
        absolute.axhline(0, color="#222222", lw=0.8)
    absolute.set_ylabel("energy per output token [J/token]")
    absolute.margins(y=0.12)
    absolute.legend(fontsize=8, loc="best")
    share.set_ylabel("share of the energy [%]")
    share.set_ylim(0, 112)
    fig.suptitle("Idle against active energy per output token (mean over done cycles)", fontsize=10)
    return Drawn(fig, "Idle (baseline) against active energy per output token per experiment")


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def lower_left_fronts(points: list[tuple[str, float, float]]) -> dict[str, list[int]]:
    """Per group (backend), the indices of its (group, x, y) points that no other point of the same group beats
    on both axes (strictly lower x and strictly lower y; lower is better), by x then y."""
    by_group: dict[str, list[tuple[int, float, float]]] = {}
    for i, point in enumerate(points):
        if not isinstance(point, tuple) or len(point) != 3 or not isinstance(point[0], str):
            raise ValueError(f"points[{i}] must be a (backend, x, y) tuple, got {point!r}")
        x, y = _finite(f"points[{i}] x", point[1]), _finite(f"points[{i}] y", point[2])
        by_group.setdefault(point[0], []).append((i, x, y))
    fronts = {}
    for group, mine in by_group.items():
        kept = [i for i, x, y in mine if not any(ox < x and oy < y for _, ox, oy in mine)]
        fronts[group] = sorted(kept, key=lambda i: (points[i][1], points[i][2]))
    return fronts


@dataclass
class ServingPoint:
    """One serving experiment, each figure the mean over its done runs with its 95 % CI (None under 2 runs):
    p99 TPOT in ms, goodput (None without an SLO), and J/token (None without energy; ``steady`` when it is the
    steady state's)."""

    experiment_index: int
    backend: str
    tpot_ms: float
    tpot_low: float | None
    tpot_high: float | None
    goodput: float | None
    goodput_low: float | None
    goodput_high: float | None
    jpt: float | None
    jpt_low: float | None
    jpt_high: float | None
    steady: bool = True


def _no_energy_text(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        wrap=True,
        color="#8a5a00",
        bbox={"boxstyle": "round", "facecolor": "#fff8e5", "edgecolor": "#e0a800"},
    ).set_gid("energy-na")


def _serving_panel(
    ax: Axes, points: list[ServingPoint], axis: str, xlabel: str, energy_note: str, key: str
) -> dict[str, list[int]]:
    """One panel of ``serving_figure``: J/token against p99 TPOT (``axis`` "tpot") or goodput ("goodput") with
    CIs on both axes and the Pareto front of each backend as a step line; the experiments on each front."""

    def x_of(p: ServingPoint) -> tuple[float, float | None, float | None]:
        if axis == "tpot":
            return p.tpot_ms, p.tpot_low, p.tpot_high
        assert p.goodput is not None
        return p.goodput, p.goodput_low, p.goodput_high

    mine = [p for p in points if axis == "tpot" or p.goodput is not None]
    with_energy = [p for p in mine if p.jpt is not None]
    backends = list(dict.fromkeys(p.backend for p in mine))
    style = _series_style([(b, "") for b in backends])
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")
    missing = [p for p in mine if p.jpt is None]
    if not with_energy:
        # Still say where each experiment lies on x; there is no J/token to put it against.
        for p in mine:
            colour, _ = style[(p.backend, "")]
            ax.axvline(x_of(p)[0], color=colour, lw=1.2, ls=":").set_gid(f"{key}-e{p.experiment_index}")
            ax.text(x_of(p)[0], 0.92, f" e{p.experiment_index}", transform=ax.get_xaxis_transform(), fontsize=8)
        ax.set_yticks([])
        ax.set_ylabel("energy per output token: n/a")
        ax.margins(x=0.15)
        _no_energy_text(ax, f"no J/token: energy {energy_note}")
        return {}
    sign = -1.0 if axis == "goodput" else 1.0
    fronts = lower_left_fronts([(p.backend, sign * x_of(p)[0], p.jpt or 0.0) for p in with_energy])

    def err(v: float, lo: float | None, hi: float | None) -> tuple[float, float]:
        return (v - lo, hi - v) if lo is not None and hi is not None else (0.0, 0.0)

    for b in backends:
        group = [p for p in with_energy if p.backend == b]
        if not group:
            continue
        colour, _ = style[(b, "")]
        for p in group:
            x, low, high = x_of(p)
            assert p.jpt is not None
            bars = ax.errorbar(
                [x],
                [p.jpt],
                xerr=[[v] for v in err(x, low, high)],
                yerr=[[v] for v in err(p.jpt, p.jpt_low, p.jpt_high)],
                fmt="o" if p.steady else "s",
                mfc=colour if p.steady else "white",
                color=colour,
                ms=6,
                capsize=3,
                lw=0.9,
            )
            bars.lines[0].set_gid(f"{key}-e{p.experiment_index}")
        ax.plot([], [], "o", color=colour, label=b)
        front = sorted((with_energy[i] for i in fronts.get(b, [])), key=lambda p: x_of(p)[0])
        ax.plot(
            [x_of(p)[0] for p in front],
            [p.jpt or 0.0 for p in front],
            color=colour,
            lw=1.4,
            ls="--",
            drawstyle="steps-pre" if axis == "goodput" else "steps-post",
            zorder=4,
        )[0].set_gid(f"{key}-front-{b}")
    if any(not p.steady for p in with_energy):
        ax.plot([], [], "s", mfc="white", color="#555555", ls="none", label="whole-window J/token (no steady state)")
    ax.plot([], [], color="#555555", ls="--", label="Pareto front per backend")
    ax.margins(0.1)
    _annotate(ax, [(x_of(p)[0], p.jpt or 0.0, f"e{p.experiment_index}", False, False) for p in with_energy])
    if missing:
        ax.text(
            0.01,
            0.01,
            "no J/token for " + ", ".join(f"e{p.experiment_index}" for p in missing) + f": energy {energy_note}",
            transform=ax.transAxes,
            fontsize=7.5,
            color="#8a5a00",
        ).set_gid("energy-na")
    ax.set_ylabel("energy per output token [J/token]")
    ax.legend(fontsize=8, loc="best")
    return {b: [with_energy[i].experiment_index for i in front] for b, front in fronts.items()}


def serving_figure(points: list[ServingPoint], energy_note: str) -> tuple[Drawn, dict[str, dict[str, list[int]]]]:
    """J/token against p99 TPOT (left) and, where any experiment has goodput, against goodput (right), per
    experiment with CIs and each backend's Pareto front (lower-left is better against TPOT, lower-right against
    goodput). Without J/token a panel says so (``energy_note``: why) and marks where each experiment lies on x.
    The experiments on each front, per panel ("tpot", "goodput") and backend."""
    with_goodput = any(p.goodput is not None for p in points)
    fig = _figure(11, 4.8)
    axes = fig.subplots(1, 2 if with_goodput else 1, squeeze=False)[0]
    fronts = {"tpot": _serving_panel(axes[0], points, "tpot", "p99 TPOT [ms]", energy_note, "tpot")}
    axes[0].set_title("J/token against p99 TPOT: lower-left is better", fontsize=10)
    if with_goodput:
        fronts["goodput"] = _serving_panel(axes[1], points, "goodput", "goodput [requests/s]", energy_note, "goodput")
        axes[1].set_title("J/token against goodput: lower-right is better", fontsize=10)
    fig.suptitle(
        "Serving: steady-state J/token (mean over done runs, 95 % bootstrap CI) per backend, Pareto front dashed",
        fontsize=10,
    )
    return Drawn(fig, "J/token against p99 TPOT" + (" and goodput" if with_goodput else "") + " per backend"), fronts


@dataclass
class RequestEnergyBox:
    """One experiment's per-request energies (requests with energy, pooled over its done runs) of ``requests``."""

    label: str
    energies: list[float]
    requests: int


def request_energy_figure(boxes: list[RequestEnergyBox], energy_note: str) -> Drawn:
    """A box per experiment of its requests' energy (whiskers at 1.5 IQR, the mean as a triangle); an experiment
    whose requests have no energy is marked n/a, and a figure without any says so (``energy_note``: why,
    "n/a (...)")."""
    fig = _figure(11, 4.2)
    ax = fig.add_subplot()
    xs = list(range(len(boxes)))
    with_energy = [(x, b) for x, b in zip(xs, boxes, strict=True) if b.energies]
    if with_energy:
        drawn = ax.boxplot(
            [b.energies for _, b in with_energy],
            positions=[x for x, _ in with_energy],
            widths=0.5,
            showmeans=True,
            patch_artist=True,
            boxprops={"facecolor": "#d9e4f2", "edgecolor": "#1f4e9c"},
            medianprops={"color": "#c0392b"},
        )
        for (x, _), box in zip(with_energy, drawn["boxes"], strict=True):
            box.set_gid(f"box-{x}")
        _log_if_wide(ax, "y", [v for _, b in with_energy for v in b.energies], ratio=50)
        ax.set_ylabel("energy per request [J]")
    else:
        ax.set_yticks([])
        ax.set_ylabel("energy per request: n/a")
        _no_energy_text(ax, f"no per-request energy: energy {energy_note}")
    for x, b in zip(xs, boxes, strict=True):
        if not b.energies:
            ax.text(
                x, 0.04, f"n/a\n({b.requests} requests)", transform=ax.get_xaxis_transform(), ha="center", fontsize=7.5
            ).set_gid(f"na-{x}")
    ax.set_xticks(xs, [b.label for b in boxes], rotation=20 if len(boxes) > 6 else 0, fontsize=7)
    ax.set_xlim(-0.6, len(boxes) - 0.4)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Energy per request (its token share of each engine step's energy), over its done runs", fontsize=10)
    return Drawn(fig, "Per-request energy distribution per experiment")
