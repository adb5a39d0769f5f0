"""Shared test fixtures: where the recorded H200 trace lives (the shared/ folder beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
H200_TRACE_DIR = REPO.parent / "shared" / "data" / "h200"


@pytest.fixture(scope="session")
def h200_trace_dir() -> Path:
    if not (H200_TRACE_DIR / "h200_nvml_trace.jsonl").exists():
        pytest.fail(f"the recorded H200 trace is missing at {H200_TRACE_DIR} (CI lays shared/ beside the repo)")
    return H200_TRACE_DIR
