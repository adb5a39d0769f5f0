"""`lem results import DIR` against a real PostgreSQL: the earlier LLenergyMeasure's v2/v3 result files become an
imported campaign, bad and partial files are reported and leave nothing behind, and a second import adds nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from lem_planner.cli.results import results_import
from lem_planner.export import run_rows
from lem_planner.importer import import_results
from lem_planner.results import experiment_summaries, run_records
from lem_shared.db.models import Campaign, Environment, Experiment, Run, RunMetrics
from lem_shared.db.session import session_scope

DATA = Path(__file__).resolve().parents[1] / "data" / "legacy_results"
GOOD = {
    "v2/aggregated/exp_20260106_093000.json",
    "v2/aggregated/exp_20260106_094500.json",
    "v2/raw/exp_20260105_101500/process_0.json (+1 sibling files)",
    "v3/aggregated/exp_20260201_140000.json",
    "rewrite/gpt2_pytorch_20260313_101500/result.json",
}
BAD = {
    "notes/study_summary.json": "unknown format",
    "v2/aggregated/exp_20260107_080000.json": "truncated JSON",
    "v2/aggregated/exp_20260108_080000.json": "missing required field total_energy_j",
    "v3/aggregated/exp_20260301_000000.json": "unsupported schema_version 4.1.0",
    "v3/raw/exp_20260202_120000/process_1.json": "partial: per-process result without its siblings",
}


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    target = tmp_path / "old-results"
    shutil.copytree(DATA, target)
    return target


@pytest.fixture(autouse=True)
def no_imported_campaigns(stack_env) -> None:  # noqa: ANN001
    """Each test starts without imported campaigns (runs and metrics go with them), whatever ran before."""
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.source == "imported"))


def _counts() -> tuple[int, int, int, int]:
    with session_scope() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Campaign, Experiment, Run, RunMetrics))


def _runs_of(campaign_id: int) -> dict[str, Run]:
    with session_scope() as s:
        runs = s.scalars(select(Run).where(Run.campaign_id == campaign_id)).all()
        return {r.imported["experiment_id"]: r for r in runs}


def test_import_maps_v2_v3_results_and_skips_bad_files(stack_env, legacy: Path) -> None:  # noqa: ANN001
    report = import_results(legacy)

    assert {f for f, _, _ in report.imported} == GOOD
    assert {c for _, c, _ in report.imported} == {report.campaign_id} and report.runs == 5
    problems = dict(report.problems)
    assert set(problems) == set(BAD)
    for file, words in BAD.items():
        assert words in problems[file], (file, problems[file])
    benign = {f: r for f, r in report.skipped if (f, r) not in report.problems}
    assert benign["v2/raw/exp_20260106_093000/process_0.json"].startswith("covered by v2/aggregated/")
    assert benign["v3/raw/exp_20260201_140000/process_0_timeseries.json"].startswith("time-series sidecar")

    with session_scope() as s:
        campaign = s.get(Campaign, report.campaign_id)
        assert campaign.source == "imported" and campaign.imported_from == str(legacy.resolve())
        assert campaign.status == "done" and campaign.name == "imported-old-results"
        assert campaign.spec["imported"] is True
        experiments = {
            (e.config["model"], e.config["llenergymeasure"].get("config_name")): e for e in campaign.experiments
        }
    # The two v2 runs of one config share an experiment (cycles 0 and 1); four experiments in all.
    assert len(experiments) == 4
    assert experiments[("gpt2", "gpt2_bs8")].backend == "pytorch"
    vllm = experiments[("meta-llama/Llama-3.2-1B", "llama1b_vllm")]
    assert vllm.backend == "vllm" and vllm.config["dtype"] == "bfloat16"
    assert vllm.config["llenergymeasure"]["vllm"]["max_num_seqs"] == 256  # their config as found

    runs = _runs_of(report.campaign_id)
    assert {r.status for r in runs.values()} == {"done"}
    assert sorted(r.cycle for r in runs.values() if r.experiment_id == experiments[("gpt2", "gpt2_bs8")].id) == [0, 1]

    v3 = runs["exp_20260201_140000"]
    assert v3.schema_version == "imported:3.0.0" and v3.tool_version == "llenergymeasure v3"
    assert v3.imported["format"] == "v3-aggregated"
    assert v3.imported["file"] == "v3/aggregated/exp_20260201_140000.json"
    unmapped = v3.imported["unmapped"]
    assert "environment" not in unmapped  # it has a home: the environments row (its own test below)
    assert unmapped["total_flops"] == 2.84e12 and unmapped["avg_energy_per_token_j"] > 0
    assert unmapped["energy_breakdown"]["baseline_timestamp"] == "2026-02-01T13:59:20.114000"
    assert "adjusted_j" not in unmapped["energy_breakdown"]  # it has a column
    assert unmapped["process_results"][0]["energy_metrics"]["cpu_energy_j"] == 70.1
    assert unmapped["cli_overrides"] == {"max_output_tokens": {"new": 64, "original": 128}}

    with session_scope() as s:
        m = s.get(RunMetrics, v3.id)
    assert m.energy_j == pytest.approx(412.6) and m.energy_source == "imported:gpu"  # the GPU share, in J
    assert (m.input_tokens, m.output_tokens, m.requests) == (762, 384, 6)
    assert m.duration_s == pytest.approx(1.612) and m.tokens_per_s == pytest.approx(384 / 1.612)
    assert m.j_per_token == pytest.approx(412.6 / 384) and m.tokens_per_j == pytest.approx(384 / 412.6)
    assert m.latency_mean_s == pytest.approx(0.82355) and m.ttft_mean_s == pytest.approx(0.0426)
    assert m.peak_memory_bytes == round(71420.5 * 1024 * 1024) and m.peak_memory_kind == "imported"
    assert m.energy_adjusted_j == pytest.approx(301.9) and m.baseline_power_w == pytest.approx(68.4)
    assert m.baseline_method == "imported:fresh" and m.max_temperature_c == 47.0
    assert (m.warmup_iterations, m.warmup_converged, m.warmup_final_cv) == (7, True, pytest.approx(0.031))
    assert m.mean_power_w == pytest.approx(255.9) and m.model_load_s == 0 and m.model_reused is False

    # v2 per-process files: one run summing its two processes (energy and tokens), the window the longer one.
    dp = runs["exp_20260105_101500"]
    assert dp.imported["format"] == "v2-per-process" and len(dp.imported["file"]) == 2
    assert [p["process_index"] for p in dp.imported["unmapped"]["processes"]] == [0, 1]
    with session_scope() as s:
        m = s.get(RunMetrics, dp.id)
    assert m.energy_j == pytest.approx(802.4 + 815.1) and m.output_tokens == 2048 and m.input_tokens == 1010
    assert m.duration_s == pytest.approx(6.57) and m.mean_power_w == pytest.approx(124.9 + 124.1)
    assert m.latency_mean_s is None and any("latency" in n for n in dp.imported["not_recorded"])
    assert (m.warmup_iterations, m.warmup_converged) == (0, False)

    # The rewrite's result.json: tokens from its FLOPs per token, its tool version recorded.
    rewrite = runs["gpt2_20260313_101500"]
    assert rewrite.tool_version == "llenergymeasure 0.8.0" and rewrite.schema_version == "imported:2.0"
    with session_scope() as s:
        m = s.get(RunMetrics, rewrite.id)
    assert (m.output_tokens, m.input_tokens) == (320, 640) and m.energy_source == "imported:gpu"

    # What `lem results show` reads.
    records = run_records(report.campaign_id)
    assert len(records) == 5 and {r["status"] for r in records} == {"done"}
    assert {r["backend"] for r in records} == {"pytorch", "vllm"}
    assert all(r["energy_j"] is not None and r["j_per_token"] is not None for r in records)
    summaries = experiment_summaries(report.campaign_id, resamples=200, records=records)
    bs8 = next(x for x in summaries if x["experiment"]["llenergymeasure"].get("config_name") == "gpt2_bs8")
    assert bs8["runs_done"] == 2 and bs8["metrics"]["energy_j"]["n"] == 2


def test_bad_files_leave_nothing_and_reimport_is_idempotent(stack_env, legacy: Path, tmp_path: Path) -> None:  # noqa: ANN001
    # Only bad files: nothing is written, not even the campaign.
    bad_only = tmp_path / "bad-only"
    for rel in BAD:
        (bad_only / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(legacy / rel, bad_only / rel)
    before = _counts()
    report = import_results(bad_only)
    assert report.imported == [] and report.campaign_id is None and len(report.problems) == len(BAD)
    assert _counts() == before

    first = import_results(legacy)
    after_first = _counts()
    assert first.runs == 5 and after_first[2] == before[2] + 5 and after_first[3] == before[3] + 5

    again = import_results(legacy)
    assert again.imported == [] and again.campaign_id == first.campaign_id
    already = [r for _, r in again.skipped if r.startswith("already imported")]
    assert len(already) == 6  # five results, one of them two files
    assert _counts() == after_first

    # The same files elsewhere (copied, renamed) are recognised by their content.
    moved = tmp_path / "moved"
    shutil.copytree(legacy, moved)
    assert import_results(moved).imported == [] and _counts() == after_first

    # A file added later joins the same campaign as the next cycle of its experiment.
    extra = json.loads((legacy / "v2/aggregated/exp_20260106_094500.json").read_text())
    extra["experiment_id"] = "exp_20260106_100000"
    extra["start_time"] = "2026-01-06T10:00:00.000000"
    (legacy / "v2/aggregated/exp_20260106_100000.json").write_text(json.dumps(extra))
    third = import_results(legacy)
    assert third.imported == [("v2/aggregated/exp_20260106_100000.json", first.campaign_id, 1)]
    assert sorted(
        r.cycle for r in _runs_of(first.campaign_id).values() if r.imported["experiment_id"].startswith("exp_20260106")
    ) == [0, 1, 2]


def test_cli_prints_one_line_per_skipped_file_and_exits_2_without_a_directory(
    stack_env,
    legacy: Path,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    app = typer.Typer()
    app.command()(results_import)
    runner = CliRunner()

    missing = runner.invoke(app, [str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such directory" in missing.output

    result = runner.invoke(app, [str(legacy)])
    assert result.exit_code == 1, result.output  # some files were bad
    lines = result.output.splitlines()
    assert sum(line.startswith("imported ") for line in lines) == 5
    assert sum(line.startswith("skipped ") for line in lines) == 8
    assert any("skipped v2/aggregated/exp_20260107_080000.json: invalid or truncated JSON" in line for line in lines)
    assert "5 run(s) imported into campaign" in lines[-1] and "5 bad" in lines[-1]

    good_only = tmp_path / "good-only"
    shutil.copytree(legacy / "v3" / "aggregated", good_only)
    (good_only / "exp_20260301_000000.json").unlink()
    again = runner.invoke(app, [str(good_only)])
    assert again.exit_code == 0, again.output
    assert "already imported" in again.output and "0 run(s) imported" in again.output


def test_the_earlier_tools_environment_reaches_environments_and_the_export(stack_env, legacy: Path) -> None:  # noqa: ANN001
    report = import_results(legacy)
    runs = _runs_of(report.campaign_id)
    with session_scope() as s:
        v3 = s.get(Environment, runs["exp_20260201_140000"].environment_id)
        rewrite = s.get(Environment, runs["gpt2_20260313_101500"].environment_id)
        assert runs["exp_20260106_093000"].environment_id is None  # v2 recorded no environment
        v3_data, rewrite_data = v3.data, rewrite.data
    # The shape of a native run's snapshot, so everything that reads environments reads these too.
    gpu = v3_data["gpus"][0]
    assert v3_data["kind"] == "imported" and v3_data["hash"] == v3.hash
    assert (gpu["name"], gpu["driver_version"], gpu["cuda_driver_version"]) == (
        "NVIDIA H100 80GB HBM3",
        "550.90.07",
        "12.4",
    )
    assert gpu["power_limit_w"] == 700.0 and gpu["memory_total_bytes"] == round(81559.0 * 1024 * 1024)
    assert v3_data["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert v3_data["cpu_governors"] == {"performance": None}  # one governor for the host, count not recorded
    assert v3_data["container"]["container"] == "none" and v3_data["packages"] == {"vllm": "0.6.3"}
    assert v3_data["llenergymeasure"]["cuda"]["cudnn_version"] == "9.1.0"  # theirs, as found
    # The rewrite names the CUDA torch was built with (cuda_version_source: torch), not the driver's.
    assert rewrite_data["gpus"][0]["name"] == "NVIDIA A100-PCIE-40GB" and rewrite_data["cuda_runtime"] == "12.4"
    assert "cuda_driver_version" not in rewrite_data["gpus"][0] and rewrite_data["packages"] == {"torch": "2.5.1"}

    rows = {r["run_id"]: r for r in run_rows(report.campaign_id)}
    row = rows[runs["exp_20260201_140000"].id]
    assert (
        row["env_gpu_name"],
        row["env_driver_version"],
        row["env_cuda_version"],
        row["env_power_limit_w"],
        row["env_cpu"],
    ) == ("NVIDIA H100 80GB HBM3", "550.90.07", "12.4", 700.0, "Intel(R) Xeon(R) Platinum 8480+")
    assert json.loads(row["env_engine_versions"]) == {"vllm": "0.6.3"}
    row = rows[runs["gpt2_20260313_101500"].id]
    assert row["env_gpu_name"] == "NVIDIA A100-PCIE-40GB" and row["env_torch_version"] == "2.5.1"

    # Its v3 per-process twin, imported from elsewhere, shares the row: one host, one environment.
    twin = legacy / "twin"
    twin.mkdir()
    doc = json.loads((legacy / "v3/raw/exp_20260201_140000/process_0.json").read_text())
    doc["experiment_id"] = "exp_20260201_150000"
    (twin / "process_0.json").write_text(json.dumps(doc))
    assert import_results(twin).runs == 1
    with session_scope() as s:
        twin_run = s.scalar(select(Run).where(Run.imported["experiment_id"].as_string() == "exp_20260201_150000"))
        assert twin_run.environment_id == v3.id


def test_energy_is_labelled_by_the_sources_the_file_names(stack_env, legacy: Path, tmp_path: Path) -> None:  # noqa: ANN001
    report = import_results(legacy)
    runs = _runs_of(report.campaign_id)
    with session_scope() as s:
        sources = {key: s.get(RunMetrics, run.id).energy_source for key, run in runs.items()}
    # The rewrite measured the GPU through NVML (its reproducibility_notes); v3 has CodeCarbon's GPU share.
    assert sources["gpt2_20260313_101500"] == "imported:gpu"
    assert "NVML" in runs["gpt2_20260313_101500"].imported["derived"]["energy_j"]
    assert sources["exp_20260201_140000"] == "imported:gpu"

    # A v2 aggregated file without its processes' GPU share: CodeCarbon's total, GPU + CPU + RAM, says so.
    doc = json.loads((legacy / "v2/aggregated/exp_20260106_094500.json").read_text())
    doc["experiment_id"] = "exp_20260106_110000"
    for process in doc["process_results"]:
        process["energy_metrics"].pop("gpu_energy_j")
    # A rewrite file that does not say how it measured: not claimed to be the GPU's.
    rewrite = json.loads((legacy / "rewrite/gpt2_pytorch_20260313_101500/result.json").read_text())
    rewrite["experiment_id"] = "gpt2_20260313_120000"
    rewrite.pop("reproducibility_notes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "v2.json").write_text(json.dumps(doc))
    (elsewhere / "result.json").write_text(json.dumps(rewrite))
    assert import_results(elsewhere).runs == 2
    with session_scope() as s:
        found = {
            r.imported["experiment_id"]: s.get(RunMetrics, r.id).energy_source
            for r in s.scalars(select(Run).where(Run.imported["directory"].as_string() == str(elsewhere)))
        }
    assert found == {"exp_20260106_110000": "imported:gpu+cpu+ram", "gpt2_20260313_120000": "imported:unnamed"}


def test_the_files_own_tokens_per_s_is_kept_beside_ours_and_says_what_it_counts(stack_env, legacy: Path) -> None:  # noqa: ANN001
    report = import_results(legacy)
    records = {r["run_id"]: r for r in run_records(report.campaign_id)}
    runs = _runs_of(report.campaign_id)
    rewrite = records[runs["gpt2_20260313_101500"].id]
    # Ours: output tokens over the window (320 in 3.1 s); theirs: input + output (960 in 3.1 s).
    assert rewrite["tokens_per_s"] == pytest.approx(320 / 3.1)
    assert rewrite["imported_tokens_per_s"] == {
        "field": "avg_tokens_per_second",
        "value": 309.677,
        "counts": "input + output tokens",
    }
    v3 = records[runs["exp_20260201_140000"].id]
    assert v3["imported_tokens_per_s"]["counts"] == "output tokens"
    assert v3["imported_tokens_per_s"]["value"] == pytest.approx(v3["tokens_per_s"], rel=1e-3)
    assert records[runs["exp_20260105_101500"].id]["imported_tokens_per_s"] is None  # per-process files: none

    rows = {r["run_id"]: r for r in run_rows(report.campaign_id)}
    row = rows[runs["gpt2_20260313_101500"].id]
    assert row["imported_tokens_per_s"] == 309.677 and row["imported_tokens_per_s_counts"] == "input + output tokens"
    assert row["tokens_per_s"] == pytest.approx(320 / 3.1)
