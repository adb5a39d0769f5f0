"""Hostile campaign files (issue 15, items 6, 7 and 9): values that validate and then fail later (non-finite floats,
integers beyond int64, duplicate keys), inputs with no bound (huge grids, run counts, prompts, files that are
devices, FIFOs or endless), and files that are not UTF-8 text. Each is refused while planning with a line naming
the field or path and the fix; nothing reads without bound or blocks."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from lem_shared.config.bounds import INT64_MAX
from lem_shared.config.errors import ConfigError
from lem_shared.config.files import read_campaign_file
from lem_shared.config.plan import load_plan, plan_campaign, plan_text
from lem_shared.config.schema import (
    CampaignConfig,
    ExperimentConfig,
    MeasurementProtocol,
    ServiceLevels,
    ThermalGap,
    Workload,
)
from lem_shared.params.pytorch import PytorchOptions
from lem_shared.params.vllm import VllmOptions
from lem_shared.settings import get_settings

REPO = Path(__file__).resolve().parents[4]


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_campaign(raw)
    return info.value.problems


def text_problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        plan_text(text, "c.yaml")
    return info.value.problems


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set LEM_ limits for one test (the settings object is cached)."""
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def nested(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- 6: values that validate and then fail -------------------------------------------------------------------

FLOAT_FIELDS = [
    "config_gap_s",
    "cycle_gap_s",
    "thermal_gap.within_c",
    "thermal_gap.max_wait_s",
    "experiment.measurement.min_window_s",
    "experiment.measurement.idle_gap_s",
    "experiment.measurement.baseline_idle_s",
    "experiment.measurement.warmup_cv",
]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused_naming_the_field(field: str, value: float) -> None:
    problems = problems_of(merge({"name": "f"}, nested(field, value)))
    assert len(problems) == 1 and problems[0].startswith(f"{field}: must be a finite number"), problems


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", ".Inf"])
def test_yaml_spellings_of_inf_and_nan_are_refused(text: str) -> None:
    problems = text_problems(f"name: f\nconfig_gap_s: {text}\n")
    assert problems[0].startswith("config_gap_s: must be a finite number"), problems


@pytest.mark.parametrize(
    "field",
    [
        "seed",
        "experiment.workload.seed",
        "cycles",
        "experiment.batch_size",
        "experiment.workload.num_prompts",
        "experiment.measurement.warmup_max",
    ],
)
def test_integers_beyond_int64_are_refused_naming_the_field(field: str) -> None:
    problems = problems_of(merge({"name": "i"}, nested(field, 2**63)))
    assert problems and problems[0].startswith(f"{field}: must be <= "), problems


@pytest.mark.parametrize(
    "raw, where",
    [
        ({"grid": {"measurement.min_window_s": [10, math.inf]}}, "grid.measurement.min_window_s[1]"),
        ({"grid": {"workload.seed": [0, 2**64]}}, "grid.workload.seed[1]"),
        ({"backends": {"pytorch": {"workload.seed": [math.nan]}}}, "backends.pytorch.workload.seed[0]"),
        ({"include": [{"measurement.warmup_cv": math.nan}]}, "include[0].measurement.warmup_cv"),
        ({"exclude": [{"workload.seed": -(2**63) - 1}]}, "exclude[0].workload.seed"),
        (
            {"grid": {"pytorch.extra": [{"a": {"b": [1, math.inf]}}]}},
            "grid.pytorch.extra[0]: must be a finite number (got inf at a.b[1])",
        ),
    ],
)
def test_grid_include_and_exclude_values_must_be_finite_and_within_int64(raw: dict, where: str) -> None:
    """They are stored with the campaign (PostgreSQL JSON has no inf/nan; its columns no integers past int64)."""
    problems = problems_of({"name": "g", **raw})
    assert any(p.startswith(where if where.endswith(")") else f"{where}: must be ") for p in problems), problems


@pytest.mark.parametrize(
    "section, line",
    [
        (
            {"pytorch": {"generation": {"do_sample": True, "temperature": math.inf}}},
            "experiment.pytorch.generation.temperature: must be a finite number (got inf)",
        ),
        (
            {"pytorch": {"generation": {"do_sample": True, "top_k": 2**63}}},
            "experiment.pytorch.generation.top_k: must be an integer within int64 (-9,223,372,036,854,775,808 to "
            "9,223,372,036,854,775,807) (got 9223372036854775808)",
        ),
        (
            {"pytorch": {"extra": {"renormalize_logits": math.nan}}},
            "experiment.pytorch.extra: renormalize_logits: must be a finite number (got nan)",
        ),
        (
            {"pytorch": {"loading": {"quantization_config": {"quant_method": "fp8", "x": math.inf}}}},
            "experiment.pytorch.loading.quantization_config: must be a finite number (got inf at x)",
        ),
    ],
)
def test_backend_parameter_sections_refuse_non_finite_and_out_of_int64_numbers(section: dict, line: str) -> None:
    assert line in problems_of({"name": "p", "experiment": {"backend": "pytorch", "model": "org/m", **section}})


def test_vllm_section_refuses_non_finite_floats() -> None:
    with pytest.raises(ValueError, match="finite"):
        VllmOptions.model_validate({"engine": {"cpu_offload_gb": math.nan}})
    with pytest.raises(ValueError, match="int64"):
        VllmOptions.model_validate({"engine": {"max_num_seqs": 2**70}})
    with pytest.raises(ValueError, match="finite"):
        PytorchOptions.model_validate({"generation": {"repetition_penalty": math.inf}})


def test_duplicate_keys_are_refused_naming_the_key_and_its_lines() -> None:
    problems = text_problems("name: d\ncycles: 3\nexperiment:\n  batch_size: 1\n  batch_size: 8\n")
    assert problems == [
        "c.yaml: not valid YAML (line 5, column 3): duplicate key 'batch_size' (first at line 4); give each key once"
    ], problems
    top = text_problems("name: d\ncycles: 3\ncycles: 5\n")
    assert "duplicate key 'cycles' (first at line 2)" in top[0] and "line 3" in top[0], top


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = (
        "name: m\nexperiment:\n  workload: &w {num_prompts: 4, input_len: 8}\n"
        "include:\n  - {<<: {batch_size: 2}, batch_size: 4}\n"
    )
    assert [e.batch_size for e in plan_text(text, "c.yaml").experiments] == [1, 4]


# --- every numeric field has a finite, documented range ------------------------------------------------------


def _numeric_fields(model: type[BaseModel]) -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        if field.annotation in (int, float, int | None, float | None):
            yield name, field


@pytest.mark.parametrize(
    "model", [CampaignConfig, ExperimentConfig, Workload, ServiceLevels, MeasurementProtocol, ThermalGap]
)
def test_every_numeric_field_has_an_upper_bound_stated_in_its_description(model: type[BaseModel]) -> None:
    fields = dict(_numeric_fields(model))
    assert fields, model
    for name, field in fields.items():
        upper = [getattr(m, "le", None) or getattr(m, "lt", None) for m in field.metadata]
        bound = next((u for u in upper if u is not None), None)
        assert bound is not None, f"{model.__name__}.{name} has no upper bound"
        assert bound <= INT64_MAX, (name, bound)
        assert f"{bound:,}" in (field.description or "") or f"{bound:g}" in (field.description or ""), (
            f"{model.__name__}.{name}: the description should state the bound {bound}: {field.description!r}"
        )


@pytest.mark.parametrize(
    "field, typo",
    [
        ("config_gap_s", 1e10),
        ("cycle_gap_s", 1e10),
        ("thermal_gap.max_wait_s", 1e10),
        ("thermal_gap.within_c", 1e4),
        ("experiment.measurement.min_window_s", 1e7),
        ("experiment.measurement.idle_gap_s", 1e7),
        ("experiment.measurement.baseline_idle_s", 1e7),
        ("experiment.measurement.warmup_cv", 1e3),
        ("experiment.measurement.warmup_window", 10**6),
        ("experiment.measurement.warmup_min", 10**6),
        ("experiment.measurement.warmup_max", 10**6),
        ("experiment.workload.num_prompts", 10**12),
        ("experiment.workload.input_len", 10**9),
        ("experiment.workload.output_len", 10**9),
        ("experiment.batch_size", 10**9),
        ("cycles", 10**6),
    ],
)
def test_typo_sized_numbers_are_refused_with_the_bound(field: str, typo: float) -> None:
    problems = problems_of(merge({"name": "t"}, nested(field, typo)))
    assert problems and problems[0].startswith(f"{field}: must be <"), problems


def test_num_prompts_1e12_is_refused_while_planning_not_in_the_engine_host() -> None:
    problems = text_problems("name: p\nexperiment: {workload: {num_prompts: 1.0e+12}}\n")
    assert problems[0].startswith("experiment.workload.num_prompts: must be <= "), problems


def test_prompt_tokens_of_one_experiment_are_bounded() -> None:
    """Each field within its own bound, their product (the prompts the engine host builds) still too large."""
    workload = {"num_prompts": 100_000, "input_len": 100_000, "output_len": 1000}
    problems = problems_of({"name": "w", "experiment": {"model": "org/long-context", "workload": workload}})
    assert "tokens" in problems[0] and "workload.num_prompts" in problems[0], problems


# --- 7: no resource limits -----------------------------------------------------------------------------------


def test_a_billion_point_grid_is_refused_before_expanding_with_the_count_and_the_setting() -> None:
    axes = {
        "workload.seed": list(range(1000)),
        "workload.input_len": list(range(1, 1001)),
        "measurement.warmup_window": list(range(2, 1002)),
    }
    start = time.monotonic()
    problems = problems_of({"name": "big", "grid": axes})
    assert time.monotonic() - start < 5
    assert problems == [
        "grid: 1,000,000,000 points (pytorch: 1000 x 1000 x 1000), over the limit of 1,000,000; "
        "split the campaign or raise LEM_MAX_GRID_POINTS"
    ], problems


def test_the_point_limit_is_a_setting(limits: pytest.MonkeyPatch) -> None:
    raw = {
        "name": "s",
        "grid": {"batch_size": [1, 2]},
        "backends": {"pytorch": {}, "vllm": {}},
        "include": [{"batch_size": 3}],
        "experiment": {"workload": {"num_prompts": 4}},
    }
    limits.setenv("LEM_MAX_GRID_POINTS", "4")
    problems = problems_of(raw)
    assert problems[0].startswith("grid: 5 points (pytorch: 2, vllm: 2, include: 1), over the limit of 4"), problems
    limits.setenv("LEM_MAX_GRID_POINTS", "5")
    get_settings.cache_clear()
    assert len(plan_campaign(raw).experiments) == 5


def test_runs_are_bounded_by_a_setting(limits: pytest.MonkeyPatch) -> None:
    raw = {"name": "r", "cycles": 10, "grid": {"workload.seed": list(range(50))}}
    limits.setenv("LEM_MAX_RUNS", "499")
    problems = problems_of(raw)
    assert problems == [
        "cycles: 50 experiments x 10 cycles = 500 runs, over the limit of 499; lower cycles or the "
        "grid, or raise LEM_MAX_RUNS"
    ], problems
    limits.setenv("LEM_MAX_RUNS", "500")
    get_settings.cache_clear()
    assert len(plan_campaign(raw).experiments) == 50


def test_a_million_run_campaign_is_refused_by_default() -> None:
    problems = problems_of({"name": "m", "cycles": 1000, "grid": {"workload.seed": list(range(1000))}})
    assert "1,000,000 runs, over the limit of 100,000" in problems[0], problems


def test_the_100k_benchmark_grid_still_plans() -> None:
    plan = load_plan(REPO / "bench/grids/100k.yaml")
    assert len(plan.experiments) + len(plan.skipped) >= 100_000


def test_limits_have_finite_sane_ranges(limits: pytest.MonkeyPatch) -> None:
    for name in ("LEM_MAX_GRID_POINTS", "LEM_MAX_RUNS", "LEM_MAX_CAMPAIGN_FILE_BYTES"):
        for bad in ("0", "-1", str(2**63)):
            limits.setenv(name, bad)
            get_settings.cache_clear()
            with pytest.raises(ValueError):
                get_settings()
        limits.delenv(name)


def test_yaml_aliases_that_expand_without_bound_are_refused() -> None:
    lines = ["name: laughs", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines += ["grid: {workload.seed: *a8}"]
    start = time.monotonic()
    problems = text_problems("\n".join(lines) + "\n")
    assert time.monotonic() - start < 5
    assert "values once YAML aliases are expanded" in problems[0], problems


def _in_thread(call: Any, timeout: float = 10) -> Any:
    """Run ``call`` in a daemon thread: (finished, result or exception)."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return (not thread.is_alive()), (out[0] if out else None)


def refusal(path: Path) -> str:
    finished, result = _in_thread(lambda: read_campaign_file(path))
    assert finished, f"reading {path} did not return"
    assert isinstance(result, ConfigError), result
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    assert refusal(link) == f"{link}: not a regular file (a character device); give a campaign YAML file"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert refusal(fifo) == f"{fifo}: not a regular file (a FIFO); give a campaign YAML file"


def test_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path) == f"{tmp_path}: not a regular file (a directory); give a campaign YAML file"
    assert refusal(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file"


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path, limits: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 200_000)
    assert refusal(big) == (
        f"{big}: {big.stat().st_size:,} bytes, over the limit of 1,048,576; a campaign file "
        "is a few KiB (raise LEM_MAX_CAMPAIGN_FILE_BYTES if it must be larger)"
    )
    limits.setenv("LEM_MAX_CAMPAIGN_FILE_BYTES", str(4 * 1024 * 1024))
    get_settings.cache_clear()
    assert read_campaign_file(big).startswith("name: big")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "latin-1"])
def test_files_that_are_not_utf8_are_refused_in_one_line(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / f"{encoding}.yaml"
    path.write_bytes("name: caf\u00e9\ncycles: 1\n".encode(encoding))
    problem = refusal(path)
    assert problem.startswith(f"{path}: not UTF-8 text"), problem
    assert "save it as UTF-8" in problem, problem


def test_binary_files_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "blob.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert refusal(path) == f"{path}: not text (a NUL byte at offset 0); give a campaign YAML file"
    invalid = tmp_path / "invalid.yaml"
    invalid.write_bytes(b"name: x\ncycles: \xc3\x28\n")
    assert refusal(invalid) == (
        f"{invalid}: not UTF-8 text (byte 0xc3 at line 2, column 9: Latin-1 or another encoding?); save it as UTF-8"
    )
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: a\x00b\n")
    assert refusal(nul) == f"{nul}: not text (a NUL byte at offset 7); give a campaign YAML file"


def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: bom\n".encode())
    assert load_plan(path).campaign.name == "bom"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("name: s\n")
    path.chmod(0)
    assert refusal(path) == f"{path}: cannot be read (permission denied)"


def test_load_plan_reads_through_the_one_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    finished, result = _in_thread(lambda: load_plan(fifo))
    assert finished and isinstance(result, ConfigError) and "not a regular file" in result.problems[0]
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "ok", "grid": {"batch_size": [1]}}))
    assert load_plan(path).campaign.name == "ok"
