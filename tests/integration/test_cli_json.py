"""`--json` and `--version` through the real `lem` command line, and the one "did you mean" for unknown keys;
`lem db upgrade` without a server names the real fix. None of these needs the broker."""

from __future__ import annotations

import json
from pathlib import Path

from lem_shared import TOOL_VERSION
from lem_shared.db.models import SCHEMA_VERSION


def test_version_prints_tool_and_schema(lem) -> None:  # noqa: ANN001
    result = lem("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{TOOL_VERSION} (database schema revision {SCHEMA_VERSION})"


def test_validate_json_is_a_dict_and_a_bad_file_still_exits_2_on_stderr(lem, tmp_path: Path) -> None:  # noqa: ANN001
    good = tmp_path / "good.yaml"
    good.write_text("name: j\ncycles: 2\ngrid: {batch_size: [1, 2]}\n")
    result = lem("campaign", "validate", str(good), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["campaign"], summary["experiments"], summary["cycles"], summary["runs"]) == ("j", 2, 2, 4)
    assert len(summary["labels"]) == 2

    for text, says in [
        ("grid: {batchsize: [1]}", "grid.batchsize: unknown parameter; did you mean batch_size"),
        (
            "experiment: {pytorch: {generation: {top_kk: 1}}}",
            "experiment.pytorch.generation.top_kk: unknown key; did you mean top_k",
        ),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"name: j\n{text}\n")
        refused = lem("campaign", "validate", str(bad), "--json")
        assert refused.returncode == 2 and refused.stdout == ""
        assert says in refused.stderr and "allowed:" not in refused.stderr, refused.stderr


def test_db_upgrade_without_a_server_names_the_fix(lem, stack_env: dict[str, str]) -> None:  # noqa: ANN001
    import subprocess

    from tests.integration.conftest import BIN

    env = {**stack_env, "LEM_DATABASE_URL": "postgresql+psycopg://lem:secret@127.0.0.1:1/nothing"}
    result = subprocess.run([str(BIN / "lem"), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "start PostgreSQL (`make services`) or set LEM_DATABASE_URL" in lines[0]
    assert "lem db upgrade" not in lines[0] and "secret" not in lines[0]


def test_db_upgrade_json(lem) -> None:  # noqa: ANN001
    result = lem("db", "upgrade", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"revision": "head"}


# No vllm worker runs in the tests: a vllm campaign stays running with its runs pending, so `campaign run`,
# `resume` and `cancel` are seen on a live campaign without any compute.
VLLM_CAMPAIGN = (
    "name: json-vllm\ncycles: 2\nexperiment: {backend: vllm, model: random:llama-tiny, "
    "workload: {num_prompts: 2, input_len: 8, output_len: 4}}\ngrid: {batch_size: [1, 2]}\n"
)


def _one_line_error(result, code: int, says: str) -> None:  # noqa: ANN001
    """The --json convention for a refusal: nothing on stdout, exit ``code``, and on stderr one error line naming
    it (after the notes the command prints there anyway, such as the snapshot a plan was checked against)."""
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in result.stderr, result.stderr


def test_campaign_run_resume_cancel_json(lem, tmp_path: Path) -> None:  # noqa: ANN001
    file = tmp_path / "vllm.yaml"
    file.write_text(VLLM_CAMPAIGN)
    _one_line_error(lem("campaign", "run", str(file), "--json"), 1, "no live worker for backend(s) vllm")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: j\ncycles: 0\n")
    refused = lem("campaign", "run", str(bad), "--json")
    assert refused.returncode == 2 and refused.stdout == "" and "cycles" in refused.stderr

    started = lem("campaign", "run", str(file), "--no-require-workers", "--no-wait", "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    campaign_id = run["campaign_id"]
    assert isinstance(campaign_id, int)
    assert (run["name"], run["status"], run["experiments"], run["cycles"], run["runs"]) == (
        "json-vllm",
        "running",
        2,
        2,
        4,
    )
    assert run["counts"] == {"pending": 4}

    resumed = lem("campaign", "resume", str(campaign_id), "--no-wait", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["campaign_id"], summary["status"], summary["finished"], summary["total"]) == (
        campaign_id,
        "running",
        0,
        4,
    )
    assert set(summary["requeued"]) >= {"dispatched", "running"}

    cancelled = lem("campaign", "cancel", str(campaign_id), "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout) == {
        "campaign_id": campaign_id,
        "cancelled": True,
        "queued": 4,
        "stopping": 0,
        "orphaned": 0,
        "already": None,
    }
    again = json.loads(lem("campaign", "cancel", str(campaign_id), "--json").stdout)
    assert again["cancelled"] is False and again["already"] == "cancelled"

    _one_line_error(lem("campaign", "resume", str(campaign_id), "--no-wait", "--json"), 1, "was cancelled")
    for command in (("cancel",), ("resume", "--no-wait"), ("status",)):  # an id that names nothing: exit 2
        _one_line_error(
            lem("campaign", command[0], "2147483647", *command[1:], "--json"),
            2,
            "no campaign 2147483647; `lem campaign list` shows the ones there are",
        )
    _one_line_error(lem("campaign", "cancel", "0", "--json"), 2, "no campaign 0")


def test_results_import_json(lem, tmp_path: Path) -> None:  # noqa: ANN001
    import shutil

    from sqlalchemy import delete

    from lem_shared.db.models import Campaign
    from lem_shared.db.session import session_scope

    folder = tmp_path / "old-results"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "legacy_results", folder)
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.source == "imported"))
    try:
        result = lem("results", "import", str(folder), "--json")
        assert result.returncode == 1  # the folder holds bad files on purpose; each is a line on stderr
        report = json.loads(result.stdout)
        assert isinstance(report["campaign_id"], int) and report["runs"] == 5 and len(report["imported"]) == 5
        assert report["problems"] == 5 and len(report["skipped"]) >= 5  # the rest: duplicates of an imported one
        assert all(set(s) == {"file", "reason"} for s in report["skipped"])
        assert len(result.stderr.strip().splitlines()) == 5
        assert all(line.startswith("error: ") for line in result.stderr.strip().splitlines())
        shown = json.loads(lem("results", "show", str(report["campaign_id"]), "--json").stdout)
        assert len(shown) == 5
    finally:
        with session_scope() as s:
            s.execute(delete(Campaign).where(Campaign.source == "imported"))
    _one_line_error(lem("results", "import", str(tmp_path / "nowhere"), "--json"), 2, "no such directory")


def test_params_discover_json_writes_to_the_user_cache(stack_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess

    from tests.integration.conftest import BIN

    source = Path(__file__).resolve().parents[1] / "data" / "params" / "trtllm_src"
    env = {**stack_env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        [str(BIN / "lem"), "params", "discover", "trtllm", "--source", str(source), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    path = tmp_path / "cache" / "lem" / "snapshots" / "trtllm-0.0.2.json"
    assert summary["path"] == str(path) and path.is_file()
    assert (summary["backend"], summary["engine_version"]) == ("trtllm", "0.0.2")
    assert summary["parameters"] == sum(summary["groups"].values()) == len(json.loads(path.read_text())["parameters"])
    missing = subprocess.run(
        [str(BIN / "lem"), "params", "discover", "vllm", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    _one_line_error(missing, 2, "vllm discovery needs --source PATH")


def test_schedule_pause_resume_remove_json(lem, tmp_path: Path) -> None:  # noqa: ANN001
    file = tmp_path / "vllm.yaml"
    file.write_text(VLLM_CAMPAIGN)
    added = lem("schedule", "add", str(file), "--every", "1d", "--json")
    assert added.returncode == 0, added.stderr
    schedule_id = json.loads(added.stdout)["id"]
    try:
        paused = json.loads(lem("schedule", "pause", str(schedule_id), "--json").stdout)
        assert (paused["id"], paused["status"]) == (schedule_id, "paused")
        resumed = json.loads(lem("schedule", "resume", str(schedule_id), "--json").stdout)
        assert (resumed["id"], resumed["status"]) == (schedule_id, "active") and resumed["next_due_at"]
    finally:
        removed = lem("schedule", "remove", str(schedule_id), "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"schedule_id": schedule_id, "removed": True}
    for action in ("pause", "resume", "remove"):
        _one_line_error(lem("schedule", action, str(schedule_id), "--json"), 2, f"no schedule {schedule_id}")
