"""`lem results show` of an imported campaign (the earlier tool's result files in tests/data) at a narrow terminal:
labels wrap instead of taking the width, every figure column stays whole, keys are not repeated, None-valued keys
are not printed and energy per token is in the unit its size calls for; the earlier tool's own tokens/s is named
beside ours; and under the runs table of a CPU campaign, each warned check says why in plain words."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete

from lem_planner.finalise import finalise_run
from lem_planner.importer import import_results
from lem_planner.results import j_per_token_text
from lem_shared import TOOL_VERSION
from lem_shared.config.schema import ExperimentConfig
from lem_shared.db.models import SCHEMA_VERSION, BatchTimingRow, Campaign, Experiment, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.wire.messages import run_key
from tests.integration.manifest import utc

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parents[1] / "data" / "legacy_results"
RUN_HEADERS = [("tokens", "per s"), ("latency", "s"), ("TTFT", "s"), ("energy", "J"), ("energy", "per token")]
EXPERIMENT_HEADERS = [("tokens", "per s"), ("energy", "per token"), ("energy", "J"), ("TTFT", "s"), ("ITL", "ms")]


@pytest.fixture(scope="module")
def imported(stack_env, tmp_path_factory: pytest.TempPathFactory) -> int:  # noqa: ANN001
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.source == "imported"))
    target = tmp_path_factory.mktemp("show") / "old-results"
    shutil.copytree(DATA, target)
    return import_results(target).campaign_id


def _tables(text: str) -> list[list[str]]:
    """The lines of each box-drawn table in ``text``."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith(("┏", "┃", "┡", "│", "├", "└")):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def _header_cells(table: list[str]) -> list[str]:
    """Each column's header, its lines joined with a space."""
    rows = [[cell.strip() for cell in line.strip("┃").split("┃")] for line in table if line.startswith("┃")]
    return [" ".join(part for part in column if part) for column in zip(*rows, strict=True)]


def test_show_of_an_imported_campaign_fits_80_columns(stack_env: dict[str, str], imported: int) -> None:
    result = subprocess.run(
        [str(BIN / "lem"), "results", "show", str(imported)],
        env={**stack_env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    runs, experiments = _tables(text)
    assert _header_cells(runs)[3:] == [" ".join(h) for h in RUN_HEADERS]
    assert _header_cells(experiments)[3:] == [" ".join(h) for h in EXPERIMENT_HEADERS]
    assert "…" not in "".join(line.split("│", 4)[-1] for line in runs if line.startswith("│"))
    # The imported energies are joules per token: shown in J, not thousands of mJ.
    assert re.search(r"\d\.\d+ J/token", text) and not re.search(r"\d{4}\.\d+ mJ/token", text)
    assert "None" not in text
    for line in text.splitlines():
        keys = re.findall(r"(\w[\w.]*)=", line)
        assert len(keys) == len(set(keys)), line


def test_show_names_the_earlier_tools_own_tokens_per_s_beside_ours(stack_env: dict[str, str], imported: int) -> None:
    result = subprocess.run(
        [str(BIN / "lem"), "results", "show", str(imported)],
        env={**stack_env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    notes = " ".join(result.stdout.split())  # the notes wrap at 80 columns
    assert "tokens per s above: output tokens per second of the window (ours)" in notes
    # The rewrite's 960 tokens (640 in, 320 out) in 3.1 s: theirs 309.7, ours 103.2 in the table.
    assert "309.7 tokens/s of input + output tokens" in notes and "238.2 tokens/s of output tokens" in notes


def _cpu_campaign(warmups: list[tuple[bool, float]]) -> int:
    """A measured CPU campaign of one experiment, a run per (warm-up converged, its final CV), finalised by the
    control worker's own code (which runs the checks)."""
    config = ExperimentConfig(
        model="random:llama-tiny",
        workload={"num_prompts": 4, "input_len": 64, "output_len": 32},
        measurement={"min_window_s": 2, "warmup_cv": 0.15, "warmup_max": 6},
    )
    spec = config.model_dump(mode="json")
    with session_scope() as s:
        campaign = Campaign(name="show-warnings", spec={"cycles": len(warmups)}, spec_hash="7" * 64)
        s.add(campaign)
        s.flush()
        experiment = Experiment(campaign_id=campaign.id, index=0, backend="pytorch", config=spec, config_hash="7" * 64)
        s.add(experiment)
        s.flush()
        run_ids = []
        for cycle, (converged, cv) in enumerate(warmups):
            t0 = 1_900_000_000.0 + 100 * cycle
            run = Run(
                run_key=run_key(campaign.id, spec, cycle),
                campaign_id=campaign.id,
                experiment_id=experiment.id,
                cycle=cycle,
                position=cycle,
                status="measured",
                attempts=1,
                device="cpu",
                host="here",
                window_start=utc(t0),
                window_end=utc(t0 + 2.5),
                schema_version=SCHEMA_VERSION,
                tool_version=TOOL_VERSION,
            )
            s.add(run)
            s.flush()
            s.add(
                RunMetrics(
                    run_id=run.id,
                    requests=4,
                    input_tokens=256,
                    output_tokens=128,
                    duration_s=2.5,
                    tokens_per_s=51.2,
                    requests_per_s=1.6,
                    latency_mean_s=0.625,
                    latency_p50_s=0.625,
                    latency_p95_s=0.625,
                    ttft_mean_s=0.05,
                    peak_memory_bytes=None,
                    peak_memory_kind="process_peak_rss",
                    model_load_s=0.4,
                    model_reused=False,
                    warmup_iterations=6 if not converged else 4,
                    warmup_converged=converged,
                    warmup_final_cv=cv,
                    passes=1,
                )
            )
            s.add_all(
                BatchTimingRow(
                    run_id=run.id,
                    batch_index=i,
                    latency_s=0.625,
                    batch_size=1,
                    input_tokens=64,
                    output_tokens=32,
                    ttft_s=0.05,
                )
                for i in range(4)
            )
            run_ids.append(run.id)
        campaign_id = campaign.id
    for run_id in run_ids:
        assert finalise_run(run_id, wait_s=0) == "finalised"
    return campaign_id


def test_show_says_under_the_table_why_a_run_warned(stack_env: dict[str, str]) -> None:
    campaign_id = _cpu_campaign([(True, 0.04), (False, 0.235)])
    try:
        result = subprocess.run(
            [str(BIN / "lem"), "results", "show", str(campaign_id)],
            env={**stack_env, "COLUMNS": "80"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        runs_table_end = next(i for i, line in enumerate(lines) if line.startswith("└"))
        after = lines[runs_table_end:]
        start = next(i for i, line in enumerate(after) if line.startswith("exp 0 cycle 1: warning: warm-up"))
        note = " ".join(line.strip() for line in after[start : start + 2])
        assert note == (
            "exp 0 cycle 1: warning: warm-up hit its cap after 6 batches before latencies settled (CV 0.235 vs 0.15)"
        )
        assert not any(line.startswith("exp 0 cycle 0:") for line in after)  # the valid run has nothing to say
        assert any("│ done (warning)" in line for line in lines) and any("│ done (valid)" in line for line in lines)
    finally:
        with session_scope() as s:
            s.execute(delete(Campaign).where(Campaign.id == campaign_id))


def test_experiment_labels_have_no_repeated_keys_or_values(imported: int) -> None:  # noqa: ANN001
    from lem_planner.cli.tables import describe_experiments
    from lem_planner.results import experiment_summaries

    labels, caption = describe_experiments([e["experiment"] for e in experiment_summaries(imported, resamples=10)])
    assert len(labels) == 4
    for label in labels:
        values = re.findall(r"=(\S+)", label)
        assert len(values) == len(set(values)), label
    assert "None" not in caption and "=None" not in " ".join(labels)


@pytest.mark.parametrize(
    ("joules", "text"),
    [
        (4.45933, "4.46 J/token"),
        (0.01234, "12.3 mJ/token"),
        (8.5e-4, "850 µJ/token"),
        (1234.0, "1.23 kJ/token"),
        (None, "n/a"),
    ],
)
def test_energy_per_token_is_in_the_unit_its_size_calls_for(joules: float | None, text: str) -> None:
    assert j_per_token_text(joules) == text


def test_energy_per_token_interval_is_in_the_mean_s_unit() -> None:
    assert j_per_token_text(0.0123, 0.0119, 0.0131) == "12.3 mJ/token [11.9, 13.1]"
