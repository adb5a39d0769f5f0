"""Parameter discovery (PARAM-04): pytorch introspection, static parsing of fixture engine sources and wheels,
the `lem params discover` command, and the committed snapshots."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lem_planner.cli import cli
from lem_planner.params.discover import discover, load_snapshot, write_snapshot
from lem_planner.params.static import (
    REQUIRED,
    SourceTree,
    discover_static,
    parse_docstring_args,
    version_from_metadata,
)

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data" / "params"
SNAPSHOTS = ROOT / "shared" / "lem_shared" / "params" / "snapshots"
KEYS = {"name", "group", "type", "default", "doc"}


def _by_key(parameters: list[dict]) -> dict[tuple[str, str], dict]:
    return {(p["group"], p["name"]): p for p in parameters}


@pytest.fixture(scope="module")
def pytorch_snapshot() -> dict:
    return discover("pytorch")


def test_pytorch_introspection_finds_generation_loading_and_compile(pytorch_snapshot: dict) -> None:
    found = _by_key(pytorch_snapshot["parameters"])
    for name in ("max_new_tokens", "temperature", "num_beams", "cache_implementation", "do_sample", "top_p"):
        assert ("generation", name) in found, name
    for name in ("attn_implementation", "device_map", "dtype", "quantization_config", "revision", "trust_remote_code"):
        assert ("loading", name) in found, name
    for name in ("fullgraph", "dynamic", "backend", "mode"):
        assert ("compile", name) in found, name
    assert found[("loading", "revision")]["default"] == "main"
    assert found[("compile", "fullgraph")]["default"] is False
    assert found[("generation", "max_new_tokens")]["type"] == "int"
    assert "token" in found[("generation", "max_new_tokens")]["doc"]
    assert ("generation", "transformers_version") not in found
    assert pytorch_snapshot["method"] == "introspection"
    assert set(pytorch_snapshot["components"]) == {"transformers", "torch"}
    order = [(p["group"], p["name"]) for p in pytorch_snapshot["parameters"]]
    assert order == sorted(order)
    json.dumps(pytorch_snapshot)  # every default is JSON-able


def test_vllm_fixture_follows_config_references() -> None:
    version, files, parameters = discover_static("vllm", DATA / "vllm_src")
    assert version == "0.0.1"
    assert files == ["vllm/engine/arg_utils.py", "vllm/sampling_params.py"]
    found = _by_key(parameters)
    assert found[("engine", "gpu_memory_utilization")]["default"] == 0.92  # CacheConfig's Field(default=0.92)
    assert (
        found[("engine", "gpu_memory_utilization")]["doc"]
        == "The fraction of GPU memory to be used for the model executor."
    )
    assert found[("engine", "kv_cache_dtype")]["default"] == "auto"
    assert found[("engine", "model")]["default"] == "Qwen/Qwen3-0.6B"
    assert found[("engine", "cpu_offload_params")]["default"] == "<factory: set>"  # get_field(CacheConfig, ...)
    assert found[("engine", "max_num_seqs")] == {
        "name": "max_num_seqs",
        "group": "engine",
        "type": "int | None",
        "default": None,
        "doc": "",
        "source": "EngineArgs",
    }
    assert ("engine", "_api_process_count") not in found and ("engine", "registry") not in found
    assert ("engine", "local") not in found  # a method's locals are not fields


def test_msgspec_struct_fields_and_attribute_docstrings() -> None:
    _, _, parameters = discover_static("vllm", DATA / "vllm_src")
    sampling = {p["name"]: p for p in parameters if p["group"] == "sampling"}
    assert set(sampling) == {"n", "temperature", "stop", "max_tokens", "output_kind"}
    assert sampling["max_tokens"]["default"] == 16
    assert sampling["temperature"]["doc"] == "Controls the randomness of the sampling."
    assert sampling["output_kind"]["default"] == "<expr: RequestOutputKind.CUMULATIVE>"


def test_trtllm_fixture_pydantic_fields_inheritance_and_docstring_args() -> None:
    version, files, parameters = discover_static("trtllm", DATA / "trtllm_src")
    assert version == "0.0.2"  # tensorrt_llm/version.py: no dist-info in a source tree
    assert "tensorrt_llm/llmapi/llm_args.py" in files and "tensorrt_llm/builder.py" in files
    found = _by_key(parameters)
    assert found[("llm", "tensor_parallel_size")]["default"] == 1
    assert found[("llm", "tensor_parallel_size")]["doc"] == "The tensor parallel size."
    assert found[("llm", "model")]["default"] == REQUIRED
    assert found[("llm", "kv_cache_config")]["default"] == "<factory: KvCacheConfig>"
    assert found[("llm.pytorch", "attn_backend")]["doc"] == "[beta] Attention backend to use."
    assert ("llm.pytorch", "tensor_parallel_size") not in found  # base fields stay in "llm"
    assert found[("llm.tensorrt", "enable_tqdm")]["default"] is False
    assert found[("kv_cache_config", "free_gpu_memory_fraction")]["default"] == 0.9
    assert (
        found[("kv_cache_config", "free_gpu_memory_fraction")]["doc"]
        == "The fraction of GPU memory that should be allocated for the KV cache."
    )
    assert found[("build_config", "max_num_tokens")]["default"] == 8192
    assert found[("sampling", "temperature")]["doc"] == "Controls the modulation of logits when sampling new tokens."
    assert found[("sampling", "max_tokens")]["default"] == 32
    assert not any(name.startswith("_") or name in ("msg", "model_config") for _, name in found)


def test_wheel_is_read_as_a_zip_and_its_metadata_gives_the_version(tmp_path: Path) -> None:
    wheel = tmp_path / "vllm-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in (DATA / "vllm_src").rglob("*"):
            if path.is_file():
                archive.write(path, path.relative_to(DATA / "vllm_src").as_posix())
    version, _, parameters = discover_static("vllm", wheel)
    assert version == "0.0.1"
    assert ("engine", "gpu_memory_utilization") in _by_key(parameters)
    assert SourceTree(wheel).read("vllm/engine/arg_utils.py") is not None


def test_versions_from_metadata_and_docstring_args() -> None:
    text = (DATA / "vllm_src" / "vllm-0.0.1.dist-info" / "METADATA").read_text()
    assert version_from_metadata(text) == "0.0.1"
    args = parse_docstring_args("""Summary.

    Args:
        max_new_tokens (`int`, *optional*, defaults to 20):
            The maximum numbers of tokens to generate. More words.
        device_map (`str` or `dict`): Where each submodule goes.

    Returns:
        x (int): not an argument
    """)
    assert args == {
        "max_new_tokens": ("int", "The maximum numbers of tokens to generate."),
        "device_map": ("str or dict", "Where each submodule goes."),
    }


def test_cli_writes_snapshot_and_refuses_a_missing_source(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli, ["params", "discover", "trtllm", "--source", str(DATA / "trtllm_src"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    snapshot = load_snapshot(tmp_path / "trtllm-0.0.2.json")
    assert snapshot["backend"] == "trtllm" and snapshot["engine_version"] == "0.0.2"
    assert snapshot["method"].startswith("static:") and "tensorrt_llm/llmapi/llm_args.py" in snapshot["method"]
    assert all(set(p) >= KEYS for p in snapshot["parameters"])

    missing = runner.invoke(cli, ["params", "discover", "vllm", "--out", str(tmp_path)])
    assert missing.exit_code == 2
    assert "--source" in missing.output and "pip download" in missing.output
    assert "Traceback" not in missing.output
    gone = runner.invoke(cli, ["params", "discover", "vllm", "--source", str(tmp_path / "nope.whl")])
    assert gone.exit_code == 2 and "does not exist" in gone.output
    wrong = runner.invoke(cli, ["params", "discover", "vllm", "--source", str(DATA / "trtllm_src")])
    assert wrong.exit_code == 2 and "vllm/__init__.py" in wrong.output


def test_write_snapshot_names_file_by_backend_and_version(tmp_path: Path) -> None:
    snapshot = {"backend": "vllm", "engine_version": "9.9", "parameters": []}
    assert write_snapshot(snapshot, tmp_path) == tmp_path / "vllm-9.9.json"


def _committed(backend: str) -> list[Path]:
    return sorted(SNAPSHOTS.glob(f"{backend}-*.json"))


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        (
            "vllm",
            {
                ("engine", "max_num_seqs"),
                ("engine", "gpu_memory_utilization"),
                ("engine", "enable_prefix_caching"),
                ("engine", "kv_cache_dtype"),
                ("sampling", "temperature"),
            },
        ),
        ("trtllm", {("llm", "tensor_parallel_size"), ("llm", "kv_cache_config")}),
        ("pytorch", {("generation", "max_new_tokens"), ("loading", "attn_implementation"), ("compile", "mode")}),
    ],
)
def test_committed_snapshots_parse_and_hold_known_parameters(backend: str, expected: set) -> None:
    paths = _committed(backend)
    if not paths:
        pytest.skip(f"no committed {backend} snapshot under {SNAPSHOTS}")
    for path in paths:
        snapshot = load_snapshot(path)
        assert path.name == f"{backend}-{snapshot['engine_version']}.json"
        assert snapshot["backend"] == backend
        assert all(set(p) >= KEYS for p in snapshot["parameters"])
        assert expected <= set(_by_key(snapshot["parameters"])), path.name


def test_discover_on_a_terminal_says_what_it_reads_on_stderr_and_prints_only_json(tmp_path: Path) -> None:
    import sys

    from tests.terminal import stderr_on_a_terminal

    lem = str(Path(sys.executable).with_name("lem"))
    source = DATA / "trtllm_src"
    status, stdout, shown = stderr_on_a_terminal(
        [lem, "params", "discover", "trtllm", "--source", str(source), "--out", str(tmp_path), "--json"]
    )
    assert status == 0, shown
    assert json.loads(stdout)["path"] == str(tmp_path / "trtllm-0.0.2.json")
    assert f"trtllm: parsing {source}" in shown
