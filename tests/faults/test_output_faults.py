"""What `lem results` does when its output or its input is hostile (issue 15, items 4, 9, 10), through the real
`lem` command against the fault stack's private PostgreSQL (run in this process, except where a file-size limit,
an outage or a service needs a process of its own):

- a failed write leaves the file that was there (export and report write a temporary file beside the target and
  rename it over only when complete); a target that is not a regular file (/dev/full, a folder) is refused and
  left as it is; a missing parent folder is refused by both, naming it;
- ids past PostgreSQL's integer (2^31 - 1) get one line and exit 2, not a traceback;
- a JSON file nested too deeply to read is skipped with its reason, the rest of the import goes on;
- outage errors never print the database's or the broker's password.

A real write failure as root (permission bits do not stop root): the command runs under RLIMIT_FSIZE, so the
kernel refuses every write past a few KiB with EFBIG (Python ignores SIGXFSZ), as a full disk would."""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import FaultStack
from tests.integration.lem_in_process import lem_in_process

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_results"
BEYOND_INT = str(2**31)
PRECIOUS = "the export of last week: must survive\n"

Lem = Callable[..., subprocess.CompletedProcess[str]]


def _limit_file_size(max_bytes: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


@pytest.fixture(scope="module")
def lem(fault_stack: FaultStack) -> Lem:
    """`lem` as a process of its own, for a command that must run under a file-size limit (the other tests run
    it in this process: what they check is what it prints and exits with)."""

    def run(
        *args: str, env: dict[str, str] | None = None, max_file_bytes: int | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "lem"), *args],
            env=env or fault_stack.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit_file_size(max_file_bytes) if max_file_bytes else None,
        )

    return run


@pytest.fixture(scope="module")
def campaign_id(fault_stack: FaultStack, tmp_path_factory: pytest.TempPathFactory) -> int:
    """An imported campaign (5 done runs) in the private database: something to export and report."""
    folder = tmp_path_factory.mktemp("legacy") / "old-results"
    shutil.copytree(LEGACY, folder)
    result = lem_in_process("results", "import", str(folder))
    assert "5 run(s) imported into campaign" in result.stdout, result.stdout + result.stderr
    listed = json.loads(lem_in_process("campaign", "list", "--json").stdout)
    return max(c["id"] for c in listed if c["name"] == "imported-old-results")


def _one_clear_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command exited ``code`` with one error line holding ``words`` and no traceback (a library's warning,
    such as matplotlib's on a cramped figure, may come with it)."""
    text = result.stdout + result.stderr
    assert result.returncode == code, text
    assert "Traceback" not in text, text
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    for word in words:
        assert word in lines[0], text
    return lines[0]


# --- item 4: a failed write destroys nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_a_failed_export_leaves_the_existing_file_intact(lem: Lem, campaign_id: int, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"runs.{fmt}"
    target.write_text(PRECIOUS)
    result = lem("results", "export", str(campaign_id), "--format", fmt, "-o", str(target), max_file_bytes=2048)
    _one_clear_line(result, 1, str(target))
    assert target.read_text() == PRECIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left behind
    # and without the limit the same command replaces it
    assert lem("results", "export", str(campaign_id), "--format", fmt, "-o", str(target)).returncode == 0
    assert target.read_text(errors="replace") != PRECIOUS and target.stat().st_size > 2048


def test_a_failed_report_leaves_the_existing_page_intact(lem: Lem, campaign_id: int, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text(PRECIOUS)
    result = lem("results", "report", str(campaign_id), "-o", str(target), max_file_bytes=4096)
    _one_clear_line(result, 1, str(target))
    assert "wrote" not in result.stdout
    assert target.read_text() == PRECIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.fixture
def full_device(tmp_path: Path) -> Path:
    """A device node like /dev/full (char 1, 7: every write fails with ENOSPC). As root, a node of the test's own,
    so the machine's /dev/full is never at stake (a removed one is what this bug did); else /dev/full itself,
    which a user cannot remove."""
    if os.geteuid() != 0:
        return Path("/dev/full")
    node = tmp_path / "full"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    return node


@pytest.mark.parametrize(
    "command",
    [["export", "--format", "csv"], ["export", "--format", "parquet"], ["export", "--format", "json"], ["report"]],
)
def test_a_device_is_refused_and_left_a_device(campaign_id: int, full_device: Path, command: list[str]) -> None:
    before = os.stat(full_device)
    result = lem_in_process("results", command[0], str(campaign_id), *command[1:], "-o", str(full_device))
    _one_clear_line(result, 2, str(full_device), "not a regular file")
    after = os.stat(full_device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


@pytest.mark.parametrize("command", [["export"], ["report"]])
def test_a_fifo_or_a_folder_is_refused_and_left_as_it_is(campaign_id: int, tmp_path: Path, command: list[str]) -> None:
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    _one_clear_line(lem_in_process("results", command[0], str(campaign_id), "-o", str(fifo)), 2, str(fifo))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    (folder / "kept").write_text("x")
    result = lem_in_process("results", command[0], str(campaign_id), "-o", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (folder / "kept").read_text() == "x"


@pytest.mark.parametrize("command", [["export"], ["report"]])
def test_export_and_report_both_refuse_a_missing_parent_folder(
    campaign_id: int, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "out.csv"
    _one_clear_line(
        lem_in_process("results", command[0], str(campaign_id), "-o", str(missing)),
        2,
        str(missing.parent),
        "does not exist",
    )
    assert not (tmp_path / "no").exists()  # nothing created
    a_file = tmp_path / "plain-file"
    a_file.write_text(PRECIOUS)
    _one_clear_line(
        lem_in_process("results", command[0], str(campaign_id), "-o", str(a_file / "out.csv")),
        2,
        str(a_file),
        "not a folder",
    )
    assert a_file.read_text() == PRECIOUS


# --- item 9: ids past PostgreSQL's integer, write errors, deep JSON ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["results", "show", BEYOND_INT],
        ["results", "show", "0"],
        ["results", "export", BEYOND_INT, "-o", "{tmp}/x.csv"],
        ["results", "report", BEYOND_INT, "-o", "{tmp}/x.html"],
        ["results", "compare", BEYOND_INT, "1"],
        ["results", "compare", "1", f"{BEYOND_INT}:0"],
        ["results", "compare", f"1:{BEYOND_INT}", "1:0"],
        ["campaign", "status", BEYOND_INT],
        ["campaign", "resume", BEYOND_INT, "--no-wait"],
        ["campaign", "cancel", BEYOND_INT],
    ],
)
def test_an_id_past_the_database_integer_is_one_line_and_exit_2(
    campaign_id: int, tmp_path: Path, args: list[str]
) -> None:
    result = lem_in_process(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    line = _one_clear_line(result, 2)
    assert "campaign" in line or "experiment" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_json_file_nested_too_deeply_is_skipped_and_the_rest_imported(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    folder = tmp_path / "deep-results"
    shutil.copytree(LEGACY / "v3" / "aggregated", folder)
    (folder / "exp_20260301_000000.json").unlink()  # the unsupported one: leaves one good file
    depth = 100_000
    (folder / "bomb.json").write_text("[" * depth + "]" * depth)
    first = next(folder.glob("exp_*.json"))
    good = json.loads(first.read_text())
    first.write_text(json.dumps({**good, "experiment_id": "not-imported-before"}))  # new bytes: a new result
    nested: object = 1
    for _ in range(600):  # json.loads reads it; copying or storing it recursively would not
        nested = {"x": nested}
    good["experiment_id"], good["cli_overrides"] = "deep-but-readable", nested
    (folder / "deep_but_valid.json").write_text(json.dumps(good))
    result = lem_in_process("results", "import", str(folder))
    text = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in text, text
    lines = result.stdout.splitlines()
    assert any(line.startswith("skipped bomb.json: ") and "nested" in line for line in lines), text
    assert any(line.startswith("skipped deep_but_valid.json: ") and "nested" in line for line in lines), text
    assert sum(line.startswith("imported ") for line in lines) == 1, text


# --- item 10: secrets are never printed ----------------------------------------------------------------------------

SECRET = "S3cret"


@pytest.mark.parametrize(
    "args",
    [
        ["campaign", "list"],
        ["campaign", "run", "{tmp}/c.yaml"],
        ["campaign", "status", "1"],
        ["campaign", "cancel", "1"],
        ["campaign", "resume", "1", "--no-wait"],
        ["results", "show", "1"],
        ["results", "export", "1", "-o", "{tmp}/x.csv"],
        ["results", "report", "1", "-o", "{tmp}/x.html"],
        ["results", "compare", "1", "2"],
        ["results", "import", "{tmp}"],
        ["doctor"],
        ["doctor", "--json"],
    ],
)
def test_outage_errors_never_print_the_password(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: t\ncycles: 1\nexperiment: {model: 'random:llama-tiny'}\n")
    (tmp_path / "a.json").write_text(json.dumps({"schema_version": "2.0.0", "experiment_id": "x"}))
    env = {
        **os.environ,
        "LEM_DATABASE_URL": f"postgresql+psycopg://lem:{SECRET}@127.0.0.1:1/x",
        "LEM_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:1/0",
        "LEM_RESULT_BACKEND": f"redis://:{SECRET}@127.0.0.1:1/1",
    }
    result = subprocess.run(
        [str(BIN / "lem"), *(a.replace("{tmp}", str(tmp_path)) for a in args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text, text
    assert SECRET not in text, text
    assert "127.0.0.1:1" in text, text  # it still says where it looked


@pytest.mark.parametrize("entry_point", ["lem-control", "lem-telemetry", "lem-beat"])
def test_service_startup_logs_never_print_the_password(entry_point: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LEM_DATABASE_URL": f"postgresql+psycopg://lem:{SECRET}@127.0.0.1:1/x",
        "LEM_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:1/0",
        "LEM_RESULT_BACKEND": f"redis://:{SECRET}@127.0.0.1:1/1",
        "LEM_TELEMETRY_BUFFER_DIR": str(tmp_path / "buffer"),
    }
    log = tmp_path / "log"
    with log.open("w") as f:
        process = subprocess.Popen([str(BIN / entry_point)], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = 60.0
            while deadline > 0 and "127.0.0.1:1" not in log.read_text(errors="replace"):
                try:
                    process.wait(0.5)
                    break
                except subprocess.TimeoutExpired:
                    deadline -= 0.5
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
    text = log.read_text(errors="replace")
    assert "127.0.0.1:1" in text, text[-3000:]  # it did say where it tried
    assert SECRET not in text, text[-3000:]
