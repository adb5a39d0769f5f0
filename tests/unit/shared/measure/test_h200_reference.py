"""tests/data/h200/README.md stays true: the files it lists exist, its reference table is what `lem energy analyse`
prints for the shipped windows file, and the marks file beside it is refused with the format a windows file has."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "data" / "h200"
LEM = Path(sys.executable).with_name("lem")


def analyse(windows: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(LEM),
            "energy",
            "analyse",
            "--json",
            "--trace",
            str(DATA / "h200_nvml_trace.jsonl"),
            "--windows",
            str(DATA / windows),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_listed_files_exist() -> None:
    listed = set(re.findall(r"^- `([^`]+)`", (DATA / "README.md").read_text(), re.MULTILINE))
    assert listed and all((DATA / name).is_file() for name in listed), listed


def test_the_reference_table_is_what_lem_energy_analyse_prints() -> None:
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|", (DATA / "README.md").read_text(), re.MULTILINE)
    result = analyse("h200_nvml_windows.jsonl")
    assert result.returncode == 0, result.stderr
    printed = {w["name"]: (f"{w['duration_s']:.2f}", f"{w['energy_counter_j']:.1f}") for w in json.loads(result.stdout)}
    assert len(rows) == 6 and {name: (s, j) for name, s, j in rows} == printed


def test_the_marks_file_is_refused_with_the_windows_format() -> None:
    result = analyse("h200_nvml_marks.jsonl")
    assert result.returncode == 2
    assert '{"name": ..., "start": unix_s, "end": unix_s}' in result.stderr and "marks file" in result.stderr
