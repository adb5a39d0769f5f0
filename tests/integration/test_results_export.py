"""`lem results export`, `columns` and `compare` through the real stack: a 2 experiment x 3 cycle CPU campaign,
exported at both levels in every format and read back with pandas as it is; and a 3 experiment x 2 cycle GPU
campaign on the recorded H200 trace (tests/data/h200) replayed into gpu_samples and finalised by the control
worker's code, whose Parquet export must have the CPU one's schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import delete, insert

from lem_planner.export import COLUMNS
from lem_planner.finalise import finalise_run
from lem_shared import TOOL_VERSION
from lem_shared.config.schema import ExperimentConfig
from lem_shared.db.models import RUN_SCHEMA_VERSION, SCHEMA_VERSION, Campaign, Experiment, GpuSample, Run, RunMetrics
from lem_shared.db.session import session_scope
from lem_shared.wire.messages import run_key
from tests.integration.manifest import trace_rows, utc

SWEEP = {
    "name": "export-sweep",
    "cycles": 3,
    "experiment": {
        "model": "random:llama-tiny",
        "workload": {"num_prompts": 2, "input_len": 8, "output_len": 4},
        "measurement": {"min_window_s": 0, "warmup_max": 3},
    },
    "grid": {"batch_size": [1, 2]},
}
READERS = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}
GPU_UUID = "GPU-replay-h200-export-test"
GPU_PHASES = {1: ("decode_bs1", 256), 16: ("decode_bs16", 7168), 64: ("decode_bs64", 24576)}


@pytest.fixture(scope="module")
def campaign_id(workers, lem, tmp_path_factory) -> int:  # noqa: ANN001
    spec = tmp_path_factory.mktemp("export") / "campaign.yaml"
    spec.write_text(yaml.safe_dump(SWEEP))
    result = lem("campaign", "run", str(spec), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr + workers.log("pytorch")[-3000:]
    listed = json.loads(lem("campaign", "list", "--json").stdout)
    return max(c["id"] for c in listed if c["name"] == "export-sweep")


@pytest.fixture(scope="module")
def gpu_campaign_id(stack_env, h200_trace_dir: Path) -> Iterator[int]:  # noqa: ANN001
    """Batch 1, 16 and 64 of the trace's decode phases, each phase cut into two windows (cycles 0 and 1)."""
    marks = {
        m["mark"].split(":")[0]: m["t"]
        for m in map(json.loads, (h200_trace_dir / "h200_nvml_marks.jsonl").read_text().splitlines())
    }
    with session_scope() as s:
        s.execute(delete(GpuSample).where(GpuSample.gpu_uuid == GPU_UUID))
        s.execute(insert(GpuSample), trace_rows(h200_trace_dir / "h200_nvml_trace.jsonl", GPU_UUID))
        campaign = Campaign(name="export-h200-trace", spec={"cycles": 2}, spec_hash="3" * 64)
        s.add(campaign)
        s.flush()
        run_ids = []
        for index, (batch_size, (phase, tokens)) in enumerate(GPU_PHASES.items()):
            config = ExperimentConfig(
                batch_size=batch_size, workload={"num_prompts": 64}, measurement={"min_window_s": 1.0}
            ).model_dump(mode="json")
            experiment = Experiment(
                campaign_id=campaign.id,
                index=index,
                backend="pytorch",
                config=config,
                config_hash=f"{index + 100:064d}",
            )
            s.add(experiment)
            s.flush()
            start, end = marks[f"{phase}_start"], marks[f"{phase}_end"]
            for cycle in range(2):
                t0, t1 = start + cycle * (end - start) / 2, start + (cycle + 1) * (end - start) / 2
                run = Run(
                    run_key=run_key(campaign.id, config, cycle),
                    campaign_id=campaign.id,
                    experiment_id=experiment.id,
                    cycle=cycle,
                    position=0,
                    status="measured",
                    attempts=1,
                    device="cuda:0",
                    host="h200-replay",
                    gpu_uuid=GPU_UUID,
                    window_start=utc(t0),
                    window_end=utc(t1),
                    schema_version=SCHEMA_VERSION,
                    tool_version=TOOL_VERSION,
                )
                s.add(run)
                s.flush()
                s.add(
                    RunMetrics(
                        run_id=run.id,
                        requests=batch_size,
                        input_tokens=64 * batch_size,
                        output_tokens=tokens // 2,
                        duration_s=t1 - t0,
                        tokens_per_s=tokens / 2 / (t1 - t0),
                        requests_per_s=batch_size / (t1 - t0),
                        latency_mean_s=t1 - t0,
                        latency_p50_s=t1 - t0,
                        latency_p95_s=t1 - t0,
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
                run_ids.append(run.id)
        campaign_id = campaign.id
    for run_id in run_ids:
        assert finalise_run(run_id, wait_s=0) == "finalised"
    yield campaign_id
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.id == campaign_id))
        s.execute(delete(GpuSample).where(GpuSample.gpu_uuid == GPU_UUID))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_run_level_export_reads_back_with_pandas_and_every_column_is_documented(
    lem, campaign_id: int, tmp_path: Path, fmt: str
) -> None:  # noqa: ANN001
    path = tmp_path / f"runs.{fmt}"
    result = lem("results", "export", str(campaign_id), "--format", fmt, "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert f"6 run rows of campaign {campaign_id}" in result.stdout
    frame = READERS[fmt](path)
    documented = [c.name for c in COLUMNS["run"]]
    assert list(frame.columns[: len(documented)]) == documented
    assert all(name.startswith("config.") for name in frame.columns[len(documented) :])
    assert len(frame) == 6 and set(frame["status"]) == {"done"} and set(frame["cycle"]) == {0, 1, 2}
    assert sorted(frame["batch_size"].tolist()) == [1, 1, 1, 2, 2, 2]
    assert (frame["tokens_per_s"] > 0).all() and (frame["output_tokens"] > 0).all()
    assert (frame["ttft_p50_s"] <= frame["ttft_p90_s"]).all() and (frame["ttft_p90_s"] <= frame["ttft_p99_s"]).all()
    assert (frame["effective_batch_size"] == frame["batch_size"]).all()
    assert frame["energy_j"].isna().all()  # a CPU campaign: no NVML, no energy
    assert set(frame["schema_version"]) == {RUN_SCHEMA_VERSION} and set(frame["tool_version"]) == {"lem 0.1.0"}
    assert set(frame["campaign_source"]) == {"lem"}


def test_experiment_level_export_has_means_and_bootstrap_intervals(lem, campaign_id: int, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "experiments.csv"
    assert lem("results", "export", str(campaign_id), "--level", "experiment", "-o", str(path)).returncode == 0
    frame = pd.read_csv(path)
    assert list(frame.columns[: len(COLUMNS["experiment"])]) == [c.name for c in COLUMNS["experiment"]]
    assert frame["runs_done"].tolist() == [3, 3] and frame["tokens_per_s_n"].tolist() == [3, 3]
    assert (frame["tokens_per_s_ci_low"] <= frame["tokens_per_s_mean"]).all()
    assert (frame["tokens_per_s_mean"] <= frame["tokens_per_s_ci_high"]).all()


def test_columns_lists_name_unit_and_meaning(lem) -> None:  # noqa: ANN001
    columns = json.loads(lem("results", "columns", "--json").stdout)
    assert {
        "name": "j_per_token",
        "unit": "J/token",
        "type": "float",
        "meaning": "energy_j over output tokens",
    } in columns
    assert all(c["meaning"] for c in columns)


def test_compare_two_experiments_and_a_campaign_with_itself(lem, campaign_id: int) -> None:  # noqa: ANN001
    rows = json.loads(lem("results", "compare", f"{campaign_id}:0", f"{campaign_id}:1", "--json").stdout)["rows"]
    assert [r["metric"] for r in rows] == ["j_per_token", "energy_j", "tokens_per_s", "ttft_mean_s", "itl_mean_s"]
    throughput = rows[2]
    assert throughput["a"] == f"{campaign_id}:0" and throughput["b"] == f"{campaign_id}:1"
    assert throughput["diff_pct"] == pytest.approx(100 * (throughput["b_mean"] / throughput["a_mean"] - 1))
    assert isinstance(throughput["ci_overlap"], bool)
    assert rows[0]["diff_pct"] is None and rows[0]["ci_overlap"] is None  # no energy on a CPU

    same = json.loads(lem("results", "compare", str(campaign_id), str(campaign_id), "--json").stdout)
    assert same["unpaired"] == [] and same["notes"] == {
        cpu: ["no energy figures (no NVML)"] for cpu in (f"{campaign_id}:0", f"{campaign_id}:1")
    }
    same = same["rows"]
    assert {r["paired"] for r in same} == {"same config"} and len(same) == 10
    assert all(r["diff_pct"] == 0 and r["ci_overlap"] for r in same if r["metric"] == "tokens_per_s")
    table = lem("results", "compare", f"{campaign_id}:0", f"{campaign_id}:1").stdout
    assert "tokens_per_s" in table and "B vs A" in table


def test_bad_sides_and_campaigns_get_one_line_and_exit_2(lem, campaign_id: int, tmp_path: Path) -> None:  # noqa: ANN001
    for args, expected in [
        (("compare", "abc", "1"), "give a campaign id (12) or an experiment as campaign:index (12:3)"),
        (("compare", f"{campaign_id}:9", f"{campaign_id}:0"), f"campaign {campaign_id} has no experiment 9"),
        (("compare", "999999", "1"), "no campaign 999999"),
        (("export", "999999", "-o", str(tmp_path / "x.csv")), "no campaign 999999"),
        (("export", str(campaign_id), "--format", "xlsx", "-o", str(tmp_path / "x")), "xlsx"),
    ]:
        result = lem("results", *args)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, args


@pytest.mark.parametrize("level", ["run", "experiment"])
def test_cpu_and_gpu_parquet_exports_have_one_schema_and_concatenate(
    lem, campaign_id: int, gpu_campaign_id: int, tmp_path: Path, level: str
) -> None:  # noqa: ANN001
    paths = {}
    for name, cid in (("cpu", campaign_id), ("gpu", gpu_campaign_id)):
        paths[name] = tmp_path / f"{name}.parquet"  # no --format: the suffix says parquet
        result = lem("results", "export", str(cid), "--level", level, "-o", str(paths[name]))
        assert result.returncode == 0 and "(parquet)" in result.stdout, result.stderr
    cpu, gpu = pq.read_schema(paths["cpu"]), pq.read_schema(paths["gpu"])
    assert cpu.equals(gpu, check_metadata=True), set(cpu) ^ set(gpu)
    both = pa.concat_tables([pq.read_table(paths["cpu"]), pq.read_table(paths["gpu"])])
    assert both.num_rows == (6 + 6 if level == "run" else 2 + 3)
    documented = {c.name: c for c in COLUMNS[level]}
    energy = "energy_j" if level == "run" else "energy_j_mean"
    assert cpu.field(energy).type == pa.float64()  # empty on the CPU, a number all the same
    assert cpu.field(energy).metadata[b"unit"] == b"J"
    assert all(cpu.field(name).metadata[b"unit"] == c.unit.encode() for name, c in documented.items())
    energies = both.column(energy).to_pylist()
    assert all(e is None for e in energies[: len(energies) // 2 if level == "run" else 2])
    assert all(e and e > 0 for e in energies[6 if level == "run" else 2 :])
    if level == "run":
        assert cpu.field("window_start").type == pa.timestamp("us", tz="UTC")
        assert cpu.field("window_end").type == pa.timestamp("us", tz="UTC")
        assert cpu.field("cycle").type == pa.int64() and cpu.field("model_reused").type == pa.bool_()
        assert cpu.field("config.workload.input_len").type == pa.int64()
        assert cpu.field("config.measurement.min_window_s").type == pa.float64()


def test_config_columns_hold_every_experiment_field_once(lem, campaign_id: int, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "runs.csv"
    assert lem("results", "export", str(campaign_id), "-o", str(path)).returncode == 0
    frame = pd.read_csv(path)
    config = [c for c in frame.columns if c.startswith("config.")]
    # Defaults are exported (output_len, warmup_cv were not in the campaign file); own columns are not repeated;
    # options left to the engine's default (pytorch.compile: None) have none.
    assert {"config.workload.output_len", "config.measurement.warmup_cv", "config.workload.seed"} <= set(config)
    assert not {"config.backend", "config.model", "config.dtype", "config.batch_size"} & set(config)
    assert not [c for c in config if c.startswith("config.pytorch.")]
    assert sorted(frame["batch_size"].tolist()) == [1, 1, 1, 2, 2, 2]
    assert {"latency_p50_s", "latency_p90_s", "latency_p99_s", "gpu_utilisation_mean_pct"} <= set(frame.columns)
    assert not [c for c in frame.columns if "utilization" in c or "p95" in c]
    assert (frame["latency_p50_s"] <= frame["latency_p90_s"]).all()
    assert (frame["latency_p90_s"] <= frame["latency_p99_s"]).all()


def test_format_comes_from_the_suffix_and_a_contradiction_is_refused(lem, campaign_id: int, tmp_path: Path) -> None:  # noqa: ANN001
    for suffix, check in (
        (".json", lambda p: json.loads(p.read_text())),
        (".parquet", pq.read_schema),
        (".csv", pd.read_csv),
    ):
        path = tmp_path / f"runs{suffix}"
        assert lem("results", "export", str(campaign_id), "-o", str(path)).returncode == 0
        check(path)
    contradicted = tmp_path / "x.parquet"
    result = lem("results", "export", str(campaign_id), "--format", "csv", "-o", str(contradicted))
    assert result.returncode == 2 and "--format csv" in result.stderr and "x.parquet" in result.stderr
    assert not contradicted.exists() and len(result.stderr.strip().splitlines()) == 1
    result = lem("results", "export", str(campaign_id), "-o", str(tmp_path / "runs"))
    assert result.returncode == 2 and "--format csv|parquet|json" in result.stderr
    assert (
        lem("results", "export", str(campaign_id), "--format", "csv", "-o", str(tmp_path / "runs.txt")).returncode == 0
    )


def test_compare_names_unpaired_experiments_and_warns_under_3_cycles(
    lem, campaign_id: int, gpu_campaign_id: int
) -> None:  # noqa: ANN001
    compared = json.loads(lem("results", "compare", str(campaign_id), str(gpu_campaign_id), "--json").stdout)
    assert compared["unpaired"] == [f"{gpu_campaign_id}:2"]
    assert len(compared["rows"]) == 2 * 5 and {r["paired"] for r in compared["rows"]} == {"by position"}
    energy = next(r for r in compared["rows"] if r["metric"] == "energy_j")
    assert energy["ci_overlap"] is None and energy["a_reason"] == "no energy figures (no NVML)"
    assert compared["notes"][f"{gpu_campaign_id}:0"][0] == "fewer than 3 cycles: the interval is unreliable"

    table = lem("results", "compare", str(campaign_id), str(gpu_campaign_id)).stdout
    assert f"without a partner, not compared: {gpu_campaign_id}:2" in table
    assert f"{gpu_campaign_id}:1: fewer than 3 cycles: the interval is unreliable" in table
    assert "no energy figures (no NVML)" in table and "under 2 runs" not in table
    assert "J/token" in table

    mixed = lem("results", "compare", str(campaign_id), f"{gpu_campaign_id}:1")
    assert mixed.returncode == 2 and "compare two campaigns (12 13) or two experiments (12:0 13:0)" in mixed.stderr
