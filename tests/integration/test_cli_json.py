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

    for text, says in [("grid: {batchsize: [1]}", "grid.batchsize: unknown parameter; did you mean batch_size"),
                       ("experiment: {pytorch: {generation: {top_kk: 1}}}",
                        "experiment.pytorch.generation.top_kk: unknown key; did you mean top_k")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"name: j\n{text}\n")
        refused = lem("campaign", "validate", str(bad), "--json")
        assert refused.returncode == 2 and refused.stdout == ""
        assert says in refused.stderr and "allowed:" not in refused.stderr, refused.stderr


def test_db_upgrade_without_a_server_names_the_fix(lem, stack_env: dict[str, str]) -> None:  # noqa: ANN001
    import subprocess

    from tests.integration.conftest import BIN

    env = {**stack_env, "LEM_DATABASE_URL": "postgresql+psycopg://lem:secret@127.0.0.1:1/nothing"}
    result = subprocess.run([str(BIN / "lem"), "db", "upgrade"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "start PostgreSQL (`make services`) or set LEM_DATABASE_URL" in lines[0]
    assert "lem db upgrade" not in lines[0] and "secret" not in lines[0]


def test_db_upgrade_json(lem) -> None:  # noqa: ANN001
    result = lem("db", "upgrade", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"revision": "head"}
