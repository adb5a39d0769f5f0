"""Every python block of README.md's "From Python" section, executed in order in one namespace against the test
stack's real workers (the campaign block dispatches a real tiny campaign)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTION = "## From Python"


def python_blocks() -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block between the section's heading and the next one."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    blocks, current, first = [], None, 0
    for number in range(start, end):
        line = lines[number]
        if current is None and line.strip() == "```python":
            current, first = [], number + 2
        elif current is not None and line.startswith("```"):
            blocks.append((first, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_section_has_its_examples() -> None:
    code = "\n".join(text for _, text in python_blocks())
    for name in ("lem.measure(", ".begin()", ".end()", "lem.plan(", "lem.run(", "lem.results(", ".to_pandas()"):
        assert name in code, f"the README's From Python section no longer shows {name}"


def test_every_python_block_runs(workers, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(REPO)  # the examples name repo paths
    namespace: dict[str, object] = {"__name__": "readme"}
    printed = io.StringIO()
    for line, code in python_blocks():
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own examples
    m, frame = namespace["m"], namespace["frame"]
    if "n/a (no NVML)" in (m.note or ""):  # type: ignore[attr-defined]
        assert m.energy_j is None and m.verdict == "n/a"  # type: ignore[attr-defined]
    assert len(frame) == 2 and frame["tokens_per_s"].dtype == "float64"  # type: ignore[arg-type, attr-defined]
    assert namespace["campaign"].status()["status"] == "done"  # type: ignore[attr-defined]
    assert "points skipped" in printed.getvalue() and os.path.samefile(Path.cwd(), REPO)
