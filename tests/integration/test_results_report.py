"""``lem results report``: the HTML page rendered from a campaign in PostgreSQL, opened in headless Chromium.

The GPU campaign stands on the recorded H200 trace (tests/data/h200) replayed into gpu_samples, as in
test_energy_finalise.py: each of the trace's three decode phases (batch 1, 16 and 64 of a 0.85 B Llama) is cut
into six consecutive 1.4 s windows, alternately given to a pytorch and a vllm experiment of that batch size
(cycles 0-2 each), and finalised by the control worker's own code, so energy, J/token, verdicts and checks are
real figures of the trace. The backend names are labels of this test (the trace was recorded with one engine);
a seventh experiment has a single failed run. The CPU campaign's runs have no GPU, as on a host without NVML: a
batch-size sweep of three cycles with per-batch timings, so throughput, TTFT and latency have figures and energy
none. The phase-split campaigns carry a prefill-only window beside the full one, as a run with
``measurement.phase_split`` leaves them (test_phase_split.py makes one through the workers): on the trace (the
full window in the batch-16 decode, the prefill-only window in the batch-64 one, so both have energy) and on CPU.

Chromium is Debian's ``chromium`` package; the test fails (never skips) without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from sqlalchemy import delete, insert
from typer.testing import CliRunner

from lem_planner.cli.results import results_report
from lem_planner.finalise import finalise_run
from lem_planner.report import render_report, swept_parameter
from lem_planner.report_figures import pareto_front
from lem_shared import TOOL_VERSION
from lem_shared.config.schema import ExperimentConfig
from lem_shared.db.models import (
    SCHEMA_VERSION,
    BatchTimingRow,
    Campaign,
    Experiment,
    GpuSample,
    Run,
    RunMetrics,
)
from lem_shared.db.session import session_scope
from lem_shared.wire.messages import run_key
from tests.integration.manifest import trace_rows, utc

REPORT_UUID = "GPU-replay-h200-report-test"
CHROMIUM = os.environ.get("LEM_TEST_CHROMIUM", "/usr/bin/chromium")
PHASES = {1: ("decode_bs1", 256), 16: ("decode_bs16", 7168), 64: ("decode_bs64", 24576)}
SLICES = 6  # windows per decode phase: pytorch, vllm, pytorch, ... (3 cycles each)


def _config(backend: str, batch_size: int, phase_split: bool = False) -> dict:
    return ExperimentConfig(
        backend=backend,
        batch_size=batch_size,
        workload={"num_prompts": 128, "input_len": 64, "output_len": 32},
        measurement={"min_window_s": 1.0, "phase_split": phase_split},
    ).model_dump(mode="json")


def _experiment(s, campaign_id: int, index: int, config: dict) -> Experiment:  # noqa: ANN001
    experiment = Experiment(
        campaign_id=campaign_id, index=index, backend=config["backend"], config=config, config_hash=f"{index:064d}"
    )
    s.add(experiment)
    s.flush()
    return experiment


def _measured(
    s,
    experiment: Experiment,
    cycle: int,
    window: tuple[float, float] | None,
    tokens: int,  # noqa: ANN001
    batch_size: int,
    gpu_uuid: str | None,
    device: str,
    phases: dict | None = None,
) -> int:
    """A run left as a worker leaves it (status measured, metrics without energy); its id."""
    run = Run(
        run_key=run_key(experiment.campaign_id, experiment.config, cycle),
        campaign_id=experiment.campaign_id,
        experiment_id=experiment.id,
        cycle=cycle,
        position=0,
        status="measured",
        attempts=1,
        device=device,
        host="h200-replay" if gpu_uuid else "cpu-host",
        gpu_uuid=gpu_uuid,
        phases=phases,
        window_start=utc(window[0]) if window else None,
        window_end=utc(window[1]) if window else None,
        schema_version=SCHEMA_VERSION,
        tool_version=TOOL_VERSION,
    )
    s.add(run)
    s.flush()
    duration = window[1] - window[0] if window else 1.0
    s.add(
        RunMetrics(
            run_id=run.id,
            requests=batch_size,
            input_tokens=64 * batch_size,
            output_tokens=tokens,
            duration_s=duration,
            tokens_per_s=tokens / duration,
            requests_per_s=batch_size / duration,
            latency_mean_s=duration,
            latency_p50_s=duration,
            latency_p95_s=duration,
            ttft_mean_s=0.02,
            peak_memory_bytes=None,
            peak_memory_kind="none",
            model_load_s=0,
            model_reused=True,
            warmup_iterations=5,
            warmup_converged=True,
            warmup_final_cv=0.01,
            passes=1,
        )
    )
    return run.id


def _delete_campaign(campaign_id: int) -> None:
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.id == campaign_id))


@pytest.fixture(scope="module")
def gpu_campaign(stack_env, h200_trace_dir: Path) -> Iterator[dict]:  # noqa: ANN001
    rows = trace_rows(h200_trace_dir / "h200_nvml_trace.jsonl", REPORT_UUID)
    marks = {}
    for line in (h200_trace_dir / "h200_nvml_marks.jsonl").read_text().splitlines():
        m = json.loads(line)
        marks[m["mark"].split(":")[0]] = m["t"]
    with session_scope() as s:
        s.execute(delete(GpuSample).where(GpuSample.gpu_uuid == REPORT_UUID))
        s.execute(insert(GpuSample), rows)
        campaign = Campaign(
            name="report-h200-trace", spec={"cycles": 3, "structure": "interleaved"}, spec_hash="1" * 64
        )
        s.add(campaign)
        s.flush()
        campaign_id = campaign.id
        run_ids = []
        index = 0
        deep_idle = {"deep_idle": [marks["idle_start"], marks["idle_end"]]}
        for batch_size, (phase, tokens) in PHASES.items():
            experiments = [
                _experiment(s, campaign_id, index + k, _config(backend, batch_size))
                for k, backend in enumerate(("pytorch", "vllm"))
            ]
            index += 2
            start, end = marks[f"{phase}_start"], marks[f"{phase}_end"]
            step = (end - start) / SLICES
            for k in range(SLICES):
                window = (start + k * step, start + (k + 1) * step)
                run_ids.append(
                    _measured(
                        s,
                        experiments[k % 2],
                        k // 2,
                        window,
                        tokens // SLICES,
                        batch_size,
                        REPORT_UUID,
                        "cuda:0",
                        deep_idle if not run_ids else None,
                    )
                )
        failed = _experiment(s, campaign_id, index, _config("vllm", 128))
        s.add(
            Run(
                run_key=run_key(campaign_id, failed.config, 0),
                campaign_id=campaign_id,
                experiment_id=failed.id,
                cycle=0,
                status="failed",
                attempts=3,
                device="cuda:0",
                gpu_uuid=REPORT_UUID,
                error="CUDA out of memory",
                schema_version=SCHEMA_VERSION,
                tool_version=TOOL_VERSION,
            )
        )
    for run_id in run_ids:
        assert finalise_run(run_id, wait_s=0) == "finalised"
    yield {"campaign_id": campaign_id, "run_ids": run_ids, "experiments": index + 1}
    _delete_campaign(campaign_id)
    with session_scope() as s:
        s.execute(delete(GpuSample).where(GpuSample.gpu_uuid == REPORT_UUID))


CPU_BATCHES = (1, 4, 16)
CPU_CYCLES = 3


@pytest.fixture(scope="module")
def cpu_campaign(stack_env) -> Iterator[int]:  # noqa: ANN001
    """A batch-size sweep on CPU: tokens/s rises and TTFT and latency grow with the batch, cycles differ a little."""
    with session_scope() as s:
        campaign = Campaign(name="report-cpu", spec={"cycles": CPU_CYCLES}, spec_hash="2" * 64)
        s.add(campaign)
        s.flush()
        campaign_id = campaign.id
        run_ids = []
        for index, batch_size in enumerate(CPU_BATCHES):
            experiment = _experiment(s, campaign_id, index, _config("pytorch", batch_size))
            for cycle in range(CPU_CYCLES):
                t = 1_800_000_000 + 1000 * index + 100 * cycle
                length = 40 / batch_size**0.8 + 0.1 * cycle
                run_id = _measured(s, experiment, cycle, (t, t + length), 128 * 32, batch_size, None, "cpu")
                batches = 128 // batch_size  # the 128 prompts of _config, one batch after another
                latencies = [length / batches * (0.97 + 0.06 * (k % 2)) for k in range(batches)]
                for k, latency in enumerate(latencies):
                    s.add(
                        BatchTimingRow(
                            run_id=run_id,
                            batch_index=k,
                            batch_size=batch_size,
                            input_tokens=64 * batch_size,
                            output_tokens=32 * batch_size,
                            latency_s=latency,
                            ttft_s=0.01 * batch_size**0.5 * (1 + 0.1 * (k % 4)) + 0.002 * cycle,
                        )
                    )
                metrics = s.get(RunMetrics, run_id)
                metrics.latency_mean_s = metrics.latency_p50_s = sum(latencies) / batches
                run_ids.append(run_id)
    for run_id in run_ids:
        assert finalise_run(run_id, wait_s=0) == "finalised"
    yield campaign_id
    _delete_campaign(campaign_id)


def _phase_campaign(
    name: str, windows: list[tuple[tuple[float, float], tuple[float, float]]], gpu_uuid: str | None
) -> tuple[int, list[int]]:
    """One phase-split experiment (batch 16), a done run per (full window, prefill-only window) pair."""
    with session_scope() as s:
        campaign = Campaign(name=name, spec={"cycles": len(windows)}, spec_hash="3" * 64)
        s.add(campaign)
        s.flush()
        experiment = _experiment(s, campaign.id, 0, _config("pytorch", 16, phase_split=True))
        run_ids = [
            _measured(
                s,
                experiment,
                cycle,
                full,
                16 * 32,
                16,
                gpu_uuid,
                "cuda:0" if gpu_uuid else "cpu",
                {"prefill": {"window": list(prefill), "prompts": 16}},
            )
            for cycle, (full, prefill) in enumerate(windows)
        ]
        campaign_id = campaign.id
    for run_id in run_ids:
        assert finalise_run(run_id, wait_s=0) == "finalised"
    return campaign_id, run_ids


@pytest.fixture(scope="module")
def phase_campaigns(gpu_campaign: dict, h200_trace_dir: Path) -> Iterator[dict[str, int]]:
    """The trace's samples are gpu_campaign's; the full windows in its batch-16 decode, the prefill-only windows
    in its batch-64 decode (more power for a shorter time, as a prefill)."""
    marks = {
        json.loads(line)["mark"].split(":")[0]: json.loads(line)["t"]
        for line in (h200_trace_dir / "h200_nvml_marks.jsonl").read_text().splitlines()
    }
    bs16, bs64 = marks["decode_bs16_start"], marks["decode_bs64_start"]
    gpu_id, _ = _phase_campaign(
        "report-phase-split-h200",
        [((bs16 + 4 * c, bs16 + 4 * c + 3.5), (bs64 + 2 * c + 1, bs64 + 2 * c + 2)) for c in range(2)],
        REPORT_UUID,
    )
    t = 1_800_001_000
    cpu_id, _ = _phase_campaign("report-phase-split-cpu", [((t, t + 3), (t + 4, t + 4.5))], None)
    yield {"gpu": gpu_id, "cpu": cpu_id}
    _delete_campaign(gpu_id)
    _delete_campaign(cpu_id)


# --- Chromium and the DOM ----------------------------------------------------------------------------------------


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.fail(f"headless Chromium is needed at {CHROMIUM}: `apt-get install chromium` (CI installs it)")
    binary = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class Dom(HTMLParser):
    """What the tests look for in Chromium's serialised DOM: elements by id with their attributes, the element
    names and the text inside each <figure>, and the <tr> of each table body."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.figures: dict[str, dict] = {}
        self.rows: dict[str, list[dict[str, str | None]]] = {}
        self._figure: str | None = None
        self._table: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.by_id[str(a["id"])] = {"tag": tag, **a}
        if tag == "figure":
            self._figure = str(a.get("id"))
            self.figures[self._figure] = {"attrs": a, "tags": [], "ids": [], "text": []}
        elif self._figure:
            self.figures[self._figure]["tags"].append(tag)
            if a.get("id"):
                self.figures[self._figure]["ids"].append(a["id"])
        if tag == "table":
            self._table = str(a.get("id"))
            self.rows[self._table] = []
        if tag == "tr" and self._table and a.get("data-run"):
            self.rows[self._table].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._figure:
            self.figures[self._figure]["text"].append(data)


def _open(tmp_path: Path, page: Path, name: str) -> tuple[Dom, str, Path]:
    dumped = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert "<svg" in dumped or "data-note" in dumped, dumped[:2000]
    shot = tmp_path / f"{name}.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,4200", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("LEM_REPORT_SCREENSHOT_DIR")
    if keep:  # to look at the page and the screenshot afterwards
        shutil.copy(shot, Path(keep) / shot.name)
        shutil.copy(page, Path(keep) / f"{name}.html")
    return Dom(dumped), dumped, shot


def _ink(shot: Path) -> tuple[float, int]:
    """The share of the screenshot's pixels darker than the page background (white and the margins' light grey),
    and the number of distinct colours in a 1400 x 4200 shot: the GPU page gives about 5.7 % and 6,400, the CPU
    page with its three figures 3.7 % and 2,400 (its text and tables alone gave 2.4 % and 1,200 in 3,000 px)."""
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    histogram = image.convert("L").histogram()
    return sum(histogram[:235]) / sum(histogram), len(image.getcolors(1 << 24) or [])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure_files(page: Path, dom: Dom) -> dict[str, ET.Element]:
    """The page's figures as files beside it (``<stem>_figures/<figure id>.png|svg``): one PNG and one SVG per
    figure on the page and nothing else, each a valid PNG and a parseable SVG; the SVGs' roots by figure id."""
    folder = page.with_name(f"{page.stem}_figures")
    ids = set(dom.figures)
    assert {f.name for f in folder.iterdir()} == {f"{i}.{ext}" for i in ids for ext in ("png", "svg")}
    roots = {}
    for figure_id in ids:
        png = (folder / f"{figure_id}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000, figure_id
        roots[figure_id] = ET.fromstring((folder / f"{figure_id}.svg").read_bytes())
        assert roots[figure_id].tag == "{http://www.w3.org/2000/svg}svg"
    return roots


def _svg_text(root: ET.Element) -> str:
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def _points_of_pareto(figure: dict) -> int:
    return int(figure["attrs"]["data-points"])


def _points(figure: dict, key: str) -> set[str]:
    """The experiments plotted in a figure: its ``<key>-e<index>`` element ids."""
    return {i for i in figure["ids"] if re.fullmatch(rf"{key}-e\d+", i)}


def _self_contained(page: str) -> None:
    external = re.findall(r'\b(?:src|href)="(?!#|data:)([^"]*)"', page)
    assert external == [], f"external references: {external[:5]}"
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(http" not in page


# --- tests ---------------------------------------------------------------------------------------------------------


def test_report_of_a_gpu_campaign_has_every_plot(gpu_campaign: dict, tmp_path: Path) -> None:
    campaign_id, run_ids = gpu_campaign["campaign_id"], gpu_campaign["run_ids"]
    page = render_report(campaign_id, tmp_path / "report.html")
    text = page.read_text()
    _self_contained(text)
    dom, dumped, shot = _open(tmp_path, page, "report-gpu")

    # The header: name, status, experiments and runs, versions.
    assert dom.by_id["campaign"]["tag"] == "section"
    assert "report-h200-trace" in dumped and f"lem {TOOL_VERSION.split()[-1]}" in dumped
    assert f"<dd>{SCHEMA_VERSION}</dd>" in dumped and "<dd>batch_size</dd>" in dumped
    assert "19: 18 done, 1 failed" in dumped

    # The timeline: power and temperature lines, and every run's measurement window shaded.
    timeline = dom.figures["plot-timeline-0"]
    assert timeline["attrs"]["data-gpu"] == REPORT_UUID and "svg" in timeline["tags"] and "title" in timeline["tags"]
    assert {"tl0-power", "tl0-power-band", "tl0-temperature"} <= set(timeline["ids"])
    assert {f"tl0-window-run{r}" for r in run_ids} <= set(timeline["ids"])
    words = " ".join(timeline["text"])
    assert "power [W]" in words and "temperature [°C]" in words and "e0·c0" in words
    assert "Power and temperature of GPU-replay-h200-report-test" in words

    # J/token against batch_size, one point per measured experiment, each with its error bar (3 cycles).
    energy = dom.figures["plot-j-per-token"]
    assert {f"jpt-e{i}" for i in range(6)} <= set(energy["ids"]) and "jpt-e6" not in energy["ids"]
    words = " ".join(energy["text"])
    assert "batch_size" in words and "pytorch" in words and "vllm" in words and "J/token" in words
    assert "e6 (no runs done)" in dumped  # the failed experiment is named, not plotted

    # The Pareto front: batch 64 is cheapest per token and no slower, so it alone is on it.
    pareto = dom.figures["plot-pareto"]
    assert "pareto-front" in pareto["ids"]
    assert set(pareto["attrs"]["data-front"].split()) <= {"4", "5"}

    # J/token against throughput: batch 64 has the most tokens/s and the fewest J/token, so it alone leads.
    by_throughput = dom.figures["plot-pareto-throughput"]
    assert _points_of_pareto(by_throughput) == 6 and "ptput-front" in by_throughput["ids"]
    assert set(by_throughput["attrs"]["data-front"].split()) <= {"4", "5"}
    assert "throughput [tokens/s]" in " ".join(by_throughput["text"])

    # Throughput, TTFT and latency against batch_size for the 6 measured experiments.
    for figure_id, key, axis in (
        ("plot-throughput", "tput", "output tokens per second [tokens/s]"),
        ("plot-ttft", "ttft", "time to first token [s]"),
        ("plot-latency", "lat", "per-request latency [s]"),
    ):
        figure = dom.figures[figure_id]
        assert _points(figure, key) == {f"{key}-e{i}" for i in range(6)}, figure_id
        assert axis in " ".join(figure["text"]) and "batch_size" in " ".join(figure["text"])

    # Idle (the deep-idle baseline over each window) against active energy, one stacked bar per experiment.
    idle = dom.figures["plot-idle-active"]
    assert idle["attrs"]["data-points"] == "6" and {"idle-idle-0", "idle-active-5"} <= set(idle["ids"])
    assert "deep_idle_before_campaign" in " ".join(idle["text"]) and "% idle" in " ".join(idle["text"])
    assert 'data-note="phases"' in dumped  # no run measured a phase split

    files = _figure_files(page, dom)
    assert set(files) == {
        "plot-timeline-0",
        "plot-throughput",
        "plot-ttft",
        "plot-latency",
        "plot-j-per-token",
        "plot-pareto-throughput",
        "plot-pareto",
        "plot-idle-active",
    }
    assert "energy per output token [J/token]" in _svg_text(files["plot-pareto-throughput"])

    # The validity table: every run with its verdict and the checks that warned or failed.
    rows = dom.rows["validity-table"]
    assert len(rows) == 19 and {r["class"] for r in rows} <= {"valid", "warning", "invalid", "none"}
    assert "CUDA out of memory" in dumped

    ink, colours = _ink(shot)
    assert ink > 0.05 and colours > 3000, f"the screenshot looks blank where the plots are ({ink:.1%}, {colours})"


def test_report_of_a_cpu_campaign_has_throughput_ttft_and_latency_figures(cpu_campaign: int, tmp_path: Path) -> None:
    page = render_report(cpu_campaign, tmp_path / "cpu.html")
    _self_contained(page.read_text())
    dom, dumped, shot = _open(tmp_path, page, "report-cpu")

    # What the runs measured gets its figure: tokens/s, TTFT (p50, p90 dashed) and latency (mean, p90 dashed)
    # against batch_size, one point per experiment with its CI over 3 cycles.
    assert set(dom.figures) == {"plot-throughput", "plot-ttft", "plot-latency"}
    expected = {
        "tput": "output tokens per second [tokens/s]",
        "ttft": "time to first token [s]",
        "lat": "per-request latency [s]",
    }
    files = _figure_files(page, dom)
    for figure_id, figure in dom.figures.items():
        key = figure["attrs"]["data-plot"]
        assert _points(figure, key) == {f"{key}-e{i}" for i in range(len(CPU_BATCHES))}, figure_id
        assert figure["attrs"]["data-points"] == str(len(CPU_BATCHES))
        words = " ".join(figure["text"])
        assert expected[key] in words and "batch_size" in words and "pytorch" in words, words
        assert "95 % bootstrap CI" in words
        # the file is the same drawing: its axis titles, and one error-bar marker group per experiment
        file_text = _svg_text(files[figure_id])
        assert expected[key] in file_text and "batch_size" in file_text
        groups = {g.get("id") for g in files[figure_id].iter("{http://www.w3.org/2000/svg}g")}
        assert {f"e{i}" for i in range(len(CPU_BATCHES))} <= groups
    assert "p90 (mean over cycles)" in " ".join(dom.figures["plot-ttft"]["text"])
    assert {"ttft-spread-0"} <= set(dom.figures["plot-ttft"]["ids"])
    assert "p90 (mean over cycles)" in " ".join(dom.figures["plot-latency"]["text"])

    # Energy, telemetry, a phase split and a baseline are absent, each said with why.
    notes = set(re.findall(r'data-note="([^"]+)"', dumped))
    assert {"timeline", "energy", "ptput", "pareto", "phases", "idle-active"} <= notes
    assert "No GPU telemetry for this campaign (the runs ran on cpu" in dumped
    assert "n/a (no NVML): run on cpu, which has no GPU energy counter" in dumped
    assert len(dom.rows["validity-table"]) == len(CPU_BATCHES) * CPU_CYCLES and "experiments-table" in dom.by_id

    ink, colours = _ink(shot)
    assert ink > 0.03 and colours > 2000, f"the screenshot looks blank where the plots are ({ink:.1%}, {colours})"


def test_report_of_a_phase_split_campaign_has_prefill_and_decode(
    phase_campaigns: dict[str, int], tmp_path: Path
) -> None:
    page = render_report(phase_campaigns["gpu"], tmp_path / "phases.html")
    dom = Dom(page.read_text())
    split = dom.figures["plot-phase-split"]
    assert split["attrs"]["data-energy"] == "true" and split["attrs"]["data-points"] == "1"
    words = " ".join(split["text"])
    for axis in ("time per prompt [s]", "energy per prompt [J]", "energy per token [J/token]"):
        assert axis in words
    assert "prefill" in words and "decode" in words
    assert {"phase-prefill-0-0", "phase-decode-0-0", "phase-prefill-1-0", "phase-decode-2-0"} <= set(split["ids"])
    assert "plot-phase-split" in _figure_files(page, dom)

    cpu_page = render_report(phase_campaigns["cpu"], tmp_path / "phases-cpu.html")
    cpu = Dom(cpu_page.read_text())
    split = cpu.figures["plot-phase-split"]
    assert split["attrs"]["data-energy"] == "false"
    words = " ".join(split["text"])
    assert "time per prompt [s]" in words and "energy per prompt" not in words
    assert "No energy per phase: n/a (no NVML)" in words


def test_cli_writes_the_report_and_refuses_an_unknown_campaign(cpu_campaign: int, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(results_report)
    runner = CliRunner()
    written = runner.invoke(app, [str(cpu_campaign), "-o", str(tmp_path / "r.html")])
    assert written.exit_code == 0, written.output
    assert "wrote" in written.stdout and (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "r_figures" / "plot-throughput.png").read_bytes().startswith(PNG_SIGNATURE)

    # --figures puts them elsewhere; a report that no longer has a figure removes its old files there.
    elsewhere = tmp_path / "figs"
    elsewhere.mkdir()
    (elsewhere / "plot-pareto.svg").write_text("<svg/>")
    (elsewhere / "notes.txt").write_text("mine")
    written = runner.invoke(app, [str(cpu_campaign), "-o", str(tmp_path / "r.html"), "--figures", str(elsewhere)])
    assert written.exit_code == 0, written.output
    assert {f.name for f in elsewhere.iterdir()} == {"notes.txt"} | {
        f"plot-{n}.{ext}" for n in ("throughput", "ttft", "latency") for ext in ("png", "svg")
    }
    refused = runner.invoke(
        app, [str(cpu_campaign), "-o", str(tmp_path / "r.html"), "--figures", str(tmp_path / "no" / "such")]
    )
    assert refused.exit_code == 2 and "does not exist" in refused.stderr

    unknown = runner.invoke(app, ["999999", "--output", str(tmp_path / "x.html")])
    assert unknown.exit_code == 2 and not (tmp_path / "x.html").exists()
    assert unknown.stderr.strip().splitlines() == [
        "error: no campaign 999999; `lem campaign list` shows the ones there are"
    ]


def test_swept_parameter_and_pareto_front() -> None:
    configs = [_config(b, n) | {"dtype": d} for b in ("pytorch", "vllm") for n in (1, 8) for d in ("float16",)]
    assert swept_parameter(configs) == ("batch_size", [])
    configs[0]["dtype"] = "bfloat16"
    assert swept_parameter(configs) == ("batch_size", ["dtype"])
    assert swept_parameter([_config("pytorch", 1), _config("vllm", 1)]) == (None, [])
    # (latency, J/token): the second is dominated by the first; the third is slower but cheaper.
    assert pareto_front([(1.0, 2.0), (1.5, 2.5), (3.0, 0.5), (0.5, 4.0)]) == [3, 0, 2]
