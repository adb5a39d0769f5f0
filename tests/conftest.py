"""Shared test fixtures: the recorded H200 NVML trace, copied into the project's test data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A copy of ../shared/data/h200 (the team's recording of a real H200), so the tests stand on their own.
H200_TRACE_DIR = REPO / "tests" / "data" / "h200"


@pytest.fixture(scope="session")
def h200_trace_dir() -> Path:
    if not (H200_TRACE_DIR / "h200_nvml_trace.jsonl").exists():
        pytest.fail(f"the recorded H200 trace is missing at {H200_TRACE_DIR}")
    return H200_TRACE_DIR
