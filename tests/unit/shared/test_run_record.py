"""The run record owns every result field once: the stored figures reach it, and the export's columns and the
``show --json`` record are read off its fields."""

from __future__ import annotations

from dataclasses import fields

import pytest

from lem_shared.db.models import RunMetrics
from lem_shared.run_record import BOOL, FLOAT, INT, RUN_COLUMNS, STORED_ONLY, TEXT, TIMESTAMP, RunRecord, stored

# Stored but not a field of its own: the analysis is read into checks, phase_split, flops and the window columns;
# latency_p95_s predates the p90/p99 read from the batches and is neither shown nor exported.
NOT_FIELDS = {"run_id", *STORED_ONLY}


def test_every_stored_figure_is_a_field_of_the_record() -> None:
    stored = {c.name for c in RunMetrics.__table__.columns} - NOT_FIELDS
    assert stored - {f.name for f in fields(RunRecord)} == set()


def test_columns_are_unique_typed_and_documented_and_the_row_holds_exactly_them() -> None:
    names = [c.name for c in RUN_COLUMNS]
    assert len(names) == len(set(names))
    assert all(c.type in (INT, FLOAT, BOOL, TEXT, TIMESTAMP) and c.meaning for c in RUN_COLUMNS)
    assert list(RunRecord().row()) == names
    columns = {c.name: c for c in RUN_COLUMNS}
    assert (columns["energy_j"].unit, columns["energy_j"].type) == ("J", FLOAT)
    assert (columns["window_start"].unit, columns["window_start"].type) == ("UTC", TIMESTAMP)
    assert columns["model_reused"].type == BOOL and columns["requests"].type == INT


def test_grouped_columns_come_from_their_mapping_and_show_uses_its_names() -> None:
    record = RunRecord(
        run_id=7,
        throttle_shares={"throttle_share_sw_power_cap": 0.25},
        imported_throughput={"field": "avg_tokens_per_second", "value": 3.0, "counts": "output tokens"},
    )
    row = record.row()
    assert row["throttle_share_sw_power_cap"] == 0.25 and row["throttle_share_none"] is None
    shown = record.shown()
    assert shown["run_id"] == 7 and shown["imported_tokens_per_s"]["value"] == 3.0
    assert "throttle_shares" not in shown and "env_cpu" not in shown and "checks" in shown


def test_a_writer_stores_only_what_the_record_names() -> None:
    figures = {"energy_j": 1.5, "analysis": {"checks": []}, "latency_p95_s": 0.2}
    assert stored(figures) is figures
    with pytest.raises(ValueError, match="not fields of RunRecord: energy_mj, joules"):
        stored({"energy_j": 1.0, "joules": 2.0, "energy_mj": 3.0})
