"""Hostile campaign files through the real `lem` command line, run in this process (issue 15, items 6, 7 and 9),
on the private stack: values that used to validate and then fail in `run` or on every beat tick, files that are
devices, FIFOs, endless or not UTF-8 text, and grids or run counts without bound. Each is refused with exit code 2
and one line naming the field or path, before anything is written, and without a traceback or a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from lem_shared.db.models import Campaign, Schedule, ScheduleFiring
from tests.faults.conftest import FaultStack
from tests.integration.lem_in_process import lem_in_process

BIN = Path(sys.executable).parent
TINY = {"model": "random:llama-tiny", "workload": {"num_prompts": 2, "input_len": 16, "output_len": 8}}
COMMANDS = [
    ("campaign", "plan"),
    ("campaign", "validate"),
    ("campaign", "run", "--no-wait"),
    ("schedule", "add", "--every", "1h"),
]


def command(words: tuple[str, ...], file: Path) -> list[str]:
    """``lem campaign plan FILE``, ``lem schedule add FILE --every 1h``: the file after the two command words."""
    return [*words[:2], str(file), *words[2:]]


def rows(stack: FaultStack, model: type) -> int:
    engine = create_engine(stack.env["LEM_DATABASE_URL"])
    try:
        with Session(engine) as s:
            return s.scalar(select(func.count()).select_from(model)) or 0
    finally:
        engine.dispose()


def refused(stack: FaultStack, words: tuple[str, ...], file: Path, expected: str) -> None:
    """Exit 2, one problem (the expected one) under the ``invalid campaign file`` header, no traceback. (The
    console may wrap a long problem line at its width: compared with whitespace collapsed.)"""
    result = lem_in_process(*command(words, file))
    assert result.returncode == 2, (words, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert expected in " ".join(result.stderr.split()), (words, result.stderr)
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 1, (words, result.stderr)


def write(tmp_path: Path, name: str, spec: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "cycles": 1, "experiment": TINY, **spec}))
    return path


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"config_gap_s": float("inf")}, "config_gap_s: must be a finite number (got inf)"),
        ({"thermal_gap": {"within_c": float("nan")}}, "thermal_gap.within_c: must be a finite number (got nan)"),
        ({"seed": 2**63}, "seed: must be <= 9223372036854775807 (got 9223372036854775808)"),
        (
            {"grid": {"measurement.min_window_s": [1, float("inf")]}},
            "grid.measurement.min_window_s[1]: must be a finite number",
        ),
        ({"cycle_gap_s": 1e10}, "cycle_gap_s: must be <= 86400"),
    ],
)
def test_values_that_used_to_fail_in_run_are_refused_by_every_command(
    fault_stack: FaultStack, tmp_path: Path, spec: dict, expected: str
) -> None:
    file = write(tmp_path, "bad-number", spec)
    for words in COMMANDS:
        refused(fault_stack, words, file, expected)
    assert rows(fault_stack, Campaign) == 0 and rows(fault_stack, Schedule) == 0


def test_duplicate_keys_are_refused_naming_the_key_and_line(fault_stack: FaultStack, tmp_path: Path) -> None:
    file = tmp_path / "dup.yaml"
    file.write_text("name: dup\ncycles: 1\ncycles: 2\n")
    for words in COMMANDS:
        refused(fault_stack, words, file, "not valid YAML (line 3, column 1): duplicate key 'cycles' (first at line 2)")


def test_files_that_are_not_regular_utf8_text_are_refused_without_reading_them(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    utf16, latin1, blob = tmp_path / "utf16.yaml", tmp_path / "latin1.yaml", tmp_path / "blob.yaml"
    utf16.write_text("name: utf16\ncycles: 1\n", encoding="utf-16")
    latin1.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    blob.write_bytes(os.urandom(64) + b"\x00")
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "#" * (2 * 1024 * 1024) + "\n")
    cases = [
        (fifo, "not a regular file (a FIFO)"),
        (zero, "not a regular file (a character device)"),
        (tmp_path, "not a regular file (a directory)"),
        (tmp_path / "missing.yaml", "no such file"),
        (utf16, "not UTF-8 text (it looks like UTF-16); save it as UTF-8"),
        (latin1, "not UTF-8 text (byte 0xe9 at line 1, column 10"),
        (blob, "not "),
        (big, f"{big.stat().st_size:,} bytes, over the limit of 1,048,576"),
    ]
    for file, expected in cases:
        for words in COMMANDS:
            start = time.monotonic()
            refused(fault_stack, words, file, f"{file}: {expected}")
            assert time.monotonic() - start < 30, (file, words)
    assert rows(fault_stack, Campaign) == 0 and rows(fault_stack, Schedule) == 0


def test_a_billion_point_grid_and_a_million_runs_are_refused_at_once(fault_stack: FaultStack, tmp_path: Path) -> None:
    grid = write(
        tmp_path,
        "billion",
        {
            "grid": {
                "workload.seed": list(range(1000)),
                "measurement.warmup_window": list(range(2, 1002)),
                "measurement.warmup_max": list(range(1, 1001)),
            }
        },
    )
    runs = write(tmp_path, "million", {"cycles": 1000, "grid": {"workload.seed": list(range(1000))}})
    prompts = write(tmp_path, "prompts", {"experiment": {**TINY, "workload": {"num_prompts": 10**12}}})
    for words in COMMANDS:
        start = time.monotonic()
        refused(
            fault_stack,
            words,
            grid,
            "grid: 1,000,000,000 points (pytorch: 1000 x 1000 x 1000), over the "
            "limit of 1,000,000; split the campaign or raise LEM_MAX_GRID_POINTS",
        )
        assert time.monotonic() - start < 30
        refused(
            fault_stack, words, runs, "1,000 experiments x 1,000 cycles = 1,000,000 runs, over the limit of 100,000"
        )
        refused(fault_stack, words, prompts, "experiment.workload.num_prompts: must be <= 1000000")
    assert rows(fault_stack, Campaign) == 0 and rows(fault_stack, Schedule) == 0


def test_a_schedule_whose_firing_raises_is_recorded_once_not_retried_every_tick(
    fault_stack: FaultStack, tmp_path: Path
) -> None:
    """A schedule row whose due times cannot be computed (every_s 0: a division by zero on each tick) under a real
    `lem-beat`: one failed firing, the schedule paused, and no error on every later tick."""
    engine = create_engine(fault_stack.env["LEM_DATABASE_URL"])
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        row = Schedule(
            name="broken",
            source_path="/dev/null",
            campaign_text="name: broken\n",
            spec_hash="0" * 64,
            kind="every",
            every_s=0.0,
            timezone="UTC",
            start_at=now - timedelta(hours=1),
            overlap="queue",
            catch_up=1,
            paused=False,
            next_due_at=now - timedelta(seconds=1),
            occurrences=0,
        )
        s.add(row)
        s.flush()
        schedule_id = row.id
    log_path = tmp_path / "beat.log"
    with open(log_path, "w") as log:
        beat = subprocess.Popen(
            [str(BIN / "lem-beat")], env=fault_stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            time.sleep(12)
        finally:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(30)
    with Session(engine) as s:
        firings = list(s.scalars(select(ScheduleFiring).where(ScheduleFiring.schedule_id == schedule_id)))
        paused = s.get(Schedule, schedule_id).paused  # type: ignore[union-attr]
    engine.dispose()
    text = log_path.read_text()
    assert [f.outcome for f in firings] == ["failed"], text
    assert "ZeroDivisionError" in (firings[0].detail or "") and "the schedule is paused" in firings[0].detail
    assert paused
    assert text.count("ERROR/") == 1 and "firing failed; recorded as a failed firing" in text, text
