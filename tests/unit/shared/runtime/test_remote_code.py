"""A campaign never runs code on a worker: ``trust_remote_code`` in any backend section is refused in the engine
host before anything loads, unless the worker host's operator set LEM_ALLOW_REMOTE_CODE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lem_shared.config.schema import ExperimentConfig
from lem_shared.runtime.measure import EngineError, MeasurementRuntime
from lem_shared.settings import get_settings

pytest.importorskip("torch")


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("LEM_ALLOW_REMOTE_CODE", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def tiny(**changes: object) -> ExperimentConfig:
    config = {
        "model": "random:llama-tiny",
        "dtype": "float32",
        "batch_size": 1,
        "workload": {"num_prompts": 1, "input_len": 4, "output_len": 2},
        "measurement": {"warmup_min": 0, "warmup_max": 2, "min_window_s": 0},
    }
    return ExperimentConfig.model_validate({**config, **changes})


def test_every_backend_names_the_remote_code_it_asks_for() -> None:
    assert tiny().section().remote_code_fields() == []
    hub = "meta-llama/Llama-3.2-1B"
    assert tiny(model=hub, pytorch={"loading": {"trust_remote_code": True}}).section().remote_code_fields() == [
        "pytorch.loading.trust_remote_code"
    ]
    assert tiny(model=hub, pytorch={"loading": {"trust_remote_code": False}}).section().remote_code_fields() == []
    vllm = tiny(backend="vllm", model=hub, dtype="bfloat16", vllm={"extra": {"engine.trust_remote_code": True}})
    assert vllm.section().remote_code_fields() == ["vllm.engine.trust_remote_code"]


def test_a_local_model_folders_code_is_not_run_unless_the_operator_allows_it(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lem_worker_pytorch.adapter import TransformersAdapter

    marker = tmp_path / "ran"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.EvilModel",
                },
            }
        )
    )
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (model / name).write_text(f"open({str(marker)!r}, 'w').write('the repository code ran')\n")
    experiment = tiny(model=str(model), pytorch={"loading": {"trust_remote_code": True}})
    runtime = MeasurementRuntime(TransformersAdapter(device="cpu"))
    with pytest.raises(EngineError, match=r"pytorch\.loading\.trust_remote_code: .*LEM_ALLOW_REMOTE_CODE=true"):
        runtime.measure(experiment)
    assert not marker.exists()

    # The setting is what gates it: allowed, transformers imports the folder's code (which then fails to load).
    settings_env.setenv("LEM_ALLOW_REMOTE_CODE", "true")
    get_settings.cache_clear()
    with pytest.raises(Exception):  # noqa: B017 - whatever the folder's code does next, it ran
        runtime.measure(experiment)
    assert marker.read_text() == "the repository code ran"
