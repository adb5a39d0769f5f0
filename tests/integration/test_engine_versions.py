"""Workers advertise their engine version in their Redis heartbeat, and `lem campaign plan` checks parameters
against that version's snapshot: a real pytorch worker, and stand-in vLLM heartbeats written the way a worker
writes them."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from lem_shared.params.snapshots import committed_versions
from lem_shared.wire.heartbeat import WORKER_KEY_PREFIX, live_workers, publish_worker_beat
from tests.broker_redis import redis_client

VLLM_CAMPAIGN = """
name: engine-versions
experiment:
  backend: vllm
  model: random:llama-1b
  vllm: {engine: {max_num_active_seqs: 8}}
"""


def test_a_real_worker_advertises_its_engine_version_and_the_plan_uses_it(  # noqa: ANN001
    workers, lem, tmp_path: Path
) -> None:
    installed = version("transformers")
    beats = [b for b in live_workers(redis_client()).values() if b["backend"] == "pytorch"]
    assert beats and {b["engine_version"] for b in beats} == {installed}
    file = tmp_path / "campaign.yaml"
    file.write_text("name: pt\nexperiment: {backend: pytorch}\n")
    result = lem("campaign", "plan", str(file))
    assert result.returncode == 0, result.stderr
    assert (
        f"pytorch: checked against snapshot pytorch-{installed} (live pytorch workers run transformers "
        f"{installed})" in result.stderr
    )
    file.write_text("name: pt\nengine_versions: {pytorch: 5.17.0}\nexperiment: {backend: pytorch}\n")
    result = lem("campaign", "plan", str(file))
    assert result.returncode == 0, result.stderr
    assert "checked against snapshot pytorch-5.17.0 (pinned by engine_versions.pytorch: 5.17.0)" in result.stderr
    assert (
        f"engine_versions pins transformers 5.17.0, but live workers run {beats[0]['name']}: {installed}"
        in " ".join(result.stderr.split())
    )


def test_the_vllm_version_live_workers_advertise_picks_the_snapshot(lem, tmp_path: Path) -> None:  # noqa: ANN001
    file = tmp_path / "campaign.yaml"
    file.write_text(VLLM_CAMPAIGN)
    connection = redis_client()
    names = ["vllm-a@test", "vllm-b@test"]
    try:
        result = lem("campaign", "plan", str(file))  # no live vllm worker: the newest snapshot, and it says so
        assert result.returncode == 0, result.stderr
        newest = committed_versions("vllm")[-1]
        assert f"vllm: checked against snapshot vllm-{newest} (no live vllm worker)" in result.stderr

        publish_worker_beat(connection, names[0], "vllm", None, "0.26.0")
        result = lem("campaign", "plan", str(file))
        assert result.returncode == 2
        assert "vLLM 0.26.0 has no parameter 'max_num_active_seqs' (snapshot vllm-0.26.0)" in result.stderr

        for name, engine_version in zip(names, ["0.26.0", "0.33.0"], strict=True):  # (a heartbeat lives 10 s)
            publish_worker_beat(connection, name, "vllm", None, engine_version)
        result = lem("campaign", "plan", str(file))
        assert result.returncode == 2
        assert "live workers run different vLLM versions (vllm-a@test: 0.26.0, vllm-b@test: 0.33.0)" in " ".join(
            result.stderr.split()
        )
    finally:
        connection.delete(*(WORKER_KEY_PREFIX + name for name in names))
