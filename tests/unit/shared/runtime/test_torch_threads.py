"""LEM_TORCH_THREADS: the pytorch worker's CPU threads, set before the model loads and recorded in each run's
environment (engine.torch_threads), or torch's default when unset; a bad value is refused naming the setting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from lem_shared.config.schema import ExperimentConfig, MeasurementProtocol, Workload
from lem_shared.runtime.measure import MeasurementRuntime
from lem_shared.settings import Settings, get_settings

torch = pytest.importorskip("torch")

EXPERIMENT = ExperimentConfig(
    model="random:llama-tiny",
    workload=Workload(num_prompts=1, input_len=8, output_len=2),
    measurement=MeasurementProtocol(warmup_min=0, warmup_max=1, min_window_s=0),
)


@pytest.fixture
def torch_default() -> Iterator[int]:
    """The test process's own thread count, put back afterwards (set_num_threads is process-wide)."""
    before = torch.get_num_threads()
    get_settings.cache_clear()
    yield before
    torch.set_num_threads(before)
    get_settings.cache_clear()


def test_the_setting_sets_torch_threads_and_the_run_records_them(
    monkeypatch: pytest.MonkeyPatch, torch_default: int
) -> None:
    from lem_worker_pytorch.adapter import TransformersAdapter

    monkeypatch.setenv("LEM_TORCH_THREADS", "1")
    m = MeasurementRuntime(TransformersAdapter(device="cpu")).measure(EXPERIMENT)
    assert torch.get_num_threads() == 1
    assert m.environment["engine"] == {"torch_threads": 1, "torch_threads_from": "LEM_TORCH_THREADS"}


def test_unset_leaves_torch_default_and_says_so(monkeypatch: pytest.MonkeyPatch, torch_default: int) -> None:
    from lem_worker_pytorch.adapter import TransformersAdapter

    monkeypatch.delenv("LEM_TORCH_THREADS", raising=False)
    m = MeasurementRuntime(TransformersAdapter(device="cpu")).measure(EXPERIMENT)
    assert m.environment["engine"] == {"torch_threads": torch_default, "torch_threads_from": "torch's default"}


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_value_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LEM_TORCH_THREADS", value)
    with pytest.raises(ValidationError, match="torch_threads"):
        Settings()
