"""On a CUDA GPU with NVML (run through the device tool): the engine host measures on the GPU, its UUID is one
NVML reports, the engine host read the counter at the window's edges, and telemetry's counter energy of the window
agrees with those reads and with integrated power. Skipped elsewhere."""

from __future__ import annotations

import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"),
]


def test_engine_host_window_energy_on_the_gpu() -> None:
    from lem_shared.config.schema import ExperimentConfig, Workload
    from lem_shared.measure.energy import Sample, edge_energy, window_energy
    from lem_shared.runtime.engine_host import EngineHost
    from lem_telemetry.sources import open_source

    source, reason = open_source("nvml")
    assert source is not None, reason
    readings = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            readings.extend(source.read())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    engine = EngineHost("lem_worker_pytorch.adapter:TransformersAdapter", "cuda:0", timeout_s=600)
    try:
        experiment = ExperimentConfig(
            model="random:llama-1b",
            dtype="bfloat16",
            batch_size=16,
            workload=Workload(num_prompts=64, input_len=128, output_len=128),
        )
        m = engine.measure(experiment.model_dump(mode="json"))
        time.sleep(0.5)
    finally:
        engine.stop()
        stop.set()
        sampler.join()
    assert m.gpu_uuid in source.gpu_uuids
    assert m.window_end - m.window_start > 1.0  # at least ~10 counter updates
    samples = [Sample(r.t, r.energy_mj, r.power_w, r.power_instant_w) for r in readings if r.gpu_uuid == m.gpu_uuid]
    energy = window_energy(samples, m.window_start, m.window_end)
    assert energy.energy_j is not None and energy.power_integral_j is not None
    assert 50 < energy.mean_power_w < 1000
    assert energy.power_integral_j == pytest.approx(energy.energy_j, rel=0.05)
    assert m.edges is not None and (m.edges.start.t, m.edges.end.t) == (m.window_start, m.window_end)
    edges_j, why = edge_energy(m.edges.model_dump(mode="json"), m.gpu_uuid)
    assert why is None and edges_j == pytest.approx(energy.energy_j, rel=0.05)
    assert 0.5e-3 < m.edges.start.read_s < 0.1
