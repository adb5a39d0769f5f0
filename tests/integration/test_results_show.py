"""`lem results show` of an imported campaign (the earlier tool's result files in tests/data) at a narrow terminal:
labels wrap instead of taking the width, every figure column stays whole, keys are not repeated, None-valued keys
are not printed and energy per token is in the unit its size calls for."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete

from lem_planner.importer import import_results
from lem_planner.results import j_per_token_text
from lem_shared.db.models import Campaign
from lem_shared.db.session import session_scope

BIN = Path(sys.executable).parent
DATA = Path(__file__).resolve().parents[1] / "data" / "legacy_results"
RUN_HEADERS = [("tokens", "per s"), ("latency", "s"), ("TTFT", "s"), ("energy", "J"), ("energy", "per token")]
EXPERIMENT_HEADERS = [("tokens", "per s"), ("energy", "per token"), ("energy", "J"), ("TTFT", "s"), ("ITL", "ms")]


@pytest.fixture(scope="module")
def imported(stack_env, tmp_path_factory: pytest.TempPathFactory) -> int:  # noqa: ANN001
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.source == "imported"))
    target = tmp_path_factory.mktemp("show") / "old-results"
    shutil.copytree(DATA, target)
    return import_results(target).campaign_id


def _tables(text: str) -> list[list[str]]:
    """The lines of each box-drawn table in ``text``."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith(("┏", "┃", "┡", "│", "├", "└")):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def _header_cells(table: list[str]) -> list[str]:
    """Each column's header, its lines joined with a space."""
    rows = [[cell.strip() for cell in line.strip("┃").split("┃")] for line in table if line.startswith("┃")]
    return [" ".join(part for part in column if part) for column in zip(*rows, strict=True)]


def test_show_of_an_imported_campaign_fits_80_columns(stack_env: dict[str, str], imported: int) -> None:
    result = subprocess.run([str(BIN / "lem"), "results", "show", str(imported)], env={**stack_env, "COLUMNS": "80"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    runs, experiments = _tables(text)
    assert _header_cells(runs)[3:] == [" ".join(h) for h in RUN_HEADERS]
    assert _header_cells(experiments)[3:] == [" ".join(h) for h in EXPERIMENT_HEADERS]
    assert "…" not in "".join(line.split("│", 4)[-1] for line in runs if line.startswith("│"))
    # The imported energies are joules per token: shown in J, not thousands of mJ.
    assert re.search(r"\d\.\d+ J/token", text) and not re.search(r"\d{4}\.\d+ mJ/token", text)
    assert "None" not in text
    for line in text.splitlines():
        keys = re.findall(r"(\w[\w.]*)=", line)
        assert len(keys) == len(set(keys)), line


def test_experiment_labels_have_no_repeated_keys_or_values(imported: int) -> None:  # noqa: ANN001
    from lem_planner.cli import _describe_experiments
    from lem_planner.results import experiment_summaries

    labels, caption = _describe_experiments([e["experiment"] for e in experiment_summaries(imported, resamples=10)])
    assert len(labels) == 4
    for label in labels:
        values = re.findall(r"=(\S+)", label)
        assert len(values) == len(set(values)), label
    assert "None" not in caption and "=None" not in " ".join(labels)


@pytest.mark.parametrize(("joules", "text"), [(4.45933, "4.46 J/token"), (0.01234, "12.3 mJ/token"),
                                              (8.5e-4, "850 µJ/token"), (1234.0, "1.23 kJ/token"),
                                              (None, "n/a")])
def test_energy_per_token_is_in_the_unit_its_size_calls_for(joules: float | None, text: str) -> None:
    assert j_per_token_text(joules) == text


def test_energy_per_token_interval_is_in_the_mean_s_unit() -> None:
    assert j_per_token_text(0.0123, 0.0119, 0.0131) == "12.3 mJ/token [11.9, 13.1]"
