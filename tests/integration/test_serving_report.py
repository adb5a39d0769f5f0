"""Serving runs in ``lem results report`` and ``lem results export --level request``: the session's serving
campaign of two request rates through the real workers on the CPU (tests/integration/serving.py), its report's
serving figures, and its per-request export checked against the ``request_timings`` rows recomputed by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import delete, select

from lem_planner.export import COLUMNS, REQUEST_COLUMNS
from lem_shared.db.models import Campaign, RequestTimingRow, Run
from lem_shared.db.session import session_scope
from tests.integration.serving import RATES
from tests.integration.test_results_report import Dom, _figure_files, _self_contained, _svg_text


@pytest.fixture
def empty_campaign(stack_env) -> Iterator[int]:  # noqa: ANN001
    with session_scope() as s:
        campaign = Campaign(name="no-serving", spec={"cycles": 1}, spec_hash="5" * 64)
        s.add(campaign)
        s.flush()
        campaign_id = campaign.id
    yield campaign_id
    with session_scope() as s:
        s.execute(delete(Campaign).where(Campaign.id == campaign_id))


def _stored_requests(campaign_id: int) -> list[dict]:
    """The campaign's request_timings rows with their run's identity, in experiment, cycle, request order."""
    with session_scope() as s:
        runs = s.scalars(select(Run).where(Run.campaign_id == campaign_id)).all()
        out = []
        for run in sorted(runs, key=lambda r: (r.experiment.index, r.cycle)):
            rows = s.scalars(select(RequestTimingRow).where(RequestTimingRow.run_id == run.id)).all()
            for row in sorted(rows, key=lambda r: r.request_index):
                out.append(
                    {
                        "run_id": run.id,
                        "run_key": run.run_key,
                        "experiment_index": run.experiment.index,
                        "cycle": run.cycle,
                        "status": run.status,
                        "request_rate": run.experiment.config["workload"]["request_rate"],
                        "request_index": row.request_index,
                        "arrival": row.arrival,
                        "first_token": row.first_token,
                        "finish": row.finish,
                        "prompt_tokens": row.prompt_tokens,
                        "output_tokens": row.output_tokens,
                        "energy_j": row.energy_j,
                    }
                )
        return out


def test_report_has_the_serving_figures_and_says_energy_is_na(lem, serving_campaign: int, tmp_path: Path) -> None:  # noqa: ANN001
    page = tmp_path / "serving.html"
    result = lem("results", "report", str(serving_campaign), "-o", str(page))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    _self_contained(text)
    dom = Dom(text)
    assert set(dom.figures) == {
        "plot-throughput",
        "plot-ttft",
        "plot-latency",
        "plot-serving-tpot",
        "plot-request-energy",
    }
    files = _figure_files(page, dom)
    assert dom.by_id["serving"]["tag"] == "section"

    # J/token against p99 TPOT and goodput: both experiments placed on x, and a CPU run's energy said to be n/a.
    tpot = dom.figures["plot-serving-tpot"]
    assert tpot["attrs"]["data-points"] == "2" and tpot["attrs"]["data-energy"] == "false"
    assert tpot["attrs"]["data-goodput"] == "true" and tpot["attrs"]["data-front"] == ""
    assert {"tpot-tpot-e0", "tpot-tpot-e1", "tpot-goodput-e0", "tpot-goodput-e1", "tpot-energy-na"} <= set(tpot["ids"])
    words = " ".join(tpot["text"])
    assert "no J/token: energy n/a (no NVML): run on cpu" in words
    assert "no J/token, energy n/a (no NVML)" in words  # the caption
    assert "p99 TPOT [ms]" in _svg_text(files["plot-serving-tpot"])
    assert "goodput [requests/s]" in _svg_text(files["plot-serving-tpot"])

    # Per-request energy: every one of the 16 requests is stored, none has energy on a CPU, and the figure says so.
    energy = dom.figures["plot-request-energy"]
    assert energy["attrs"]["data-requests"] == "16" and energy["attrs"]["data-with-energy"] == "0"
    assert {"reqe-na-0", "reqe-na-1", "reqe-energy-na"} <= set(energy["ids"])
    words = " ".join(energy["text"])
    assert "no per-request energy: energy n/a (no NVML)" in words and "No request has energy" in words
    assert "(8 requests)" in _svg_text(files["plot-request-energy"])


def _by_hand(stored: dict) -> dict:
    first, finish, arrival, n = stored["first_token"], stored["finish"], stored["arrival"], stored["output_tokens"]
    return {
        "ttft_s": first - arrival,
        "tpot_s": (finish - first) / (n - 1),
        "e2e_s": finish - arrival,
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_request_export_has_a_row_per_request_equal_to_its_timings(
    lem, serving_campaign: int, tmp_path: Path, fmt: str
) -> None:  # noqa: ANN001
    path = tmp_path / f"requests.{fmt}"
    result = lem("results", "export", str(serving_campaign), "--level", "request", "-o", str(path))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert f"16 request rows of campaign {serving_campaign}" in result.stdout
    frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    documented = [c.name for c in REQUEST_COLUMNS]
    assert list(frame.columns[: len(documented)]) == documented
    assert all(name.startswith("config.") for name in frame.columns[len(documented) :])

    stored = _stored_requests(serving_campaign)
    assert len(stored) == len(frame) == 16 and {s["status"] for s in stored} == {"done"}
    assert frame.groupby("run_id").size().tolist() == [8, 8]
    assert sorted(frame["config.workload.request_rate"].unique().tolist()) == RATES
    for column in ("campaign_id", "run_id", "experiment_index", "cycle", "request_index", "prompt_tokens"):
        assert frame[column].dtype == "int64", column
    for column in ("ttft_s", "tpot_s", "e2e_s", "energy_j"):
        assert frame[column].dtype == "float64", column
    assert set(frame["backend"]) == {"pytorch"} and set(frame["campaign_id"]) == {serving_campaign}
    assert frame["energy_j"].isna().all()  # a CPU run: no energy per request

    stamps = {name: pd.to_datetime(frame[name], utc=True) for name in ("arrival", "first_token", "finish")}
    for i, s in enumerate(stored):
        row = frame.iloc[i]
        assert (row["run_id"], row["run_key"], row["request_index"]) == (s["run_id"], s["run_key"], s["request_index"])
        assert (row["experiment_index"], row["cycle"]) == (s["experiment_index"], s["cycle"])
        assert row["config.workload.request_rate"] == s["request_rate"]
        assert (row["prompt_tokens"], row["output_tokens"]) == (s["prompt_tokens"], s["output_tokens"]) and (
            s["output_tokens"] == 12
        )
        for name, value in _by_hand(s).items():
            assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
            assert 0 < row[name] < 600, name
        for name in ("arrival", "first_token", "finish"):
            expected = datetime.fromtimestamp(s[name], UTC)
            assert abs((stamps[name].iloc[i] - expected).total_seconds()) < 1e-6, name
        if fmt == "csv":  # the run export's form: ISO 8601 with the UTC offset
            assert str(row["arrival"]).endswith("+00:00") and "T" in str(row["arrival"])

    if fmt == "parquet":
        schema = pq.read_schema(path)
        for name in ("arrival", "first_token", "finish"):
            assert schema.field(name).type == pa.timestamp("us", tz="UTC")
        assert schema.field("tpot_s").metadata[b"unit"] == b"s" and schema.field("energy_j").type == pa.float64()


def test_request_columns_are_documented_and_json_is_a_list_of_records(
    lem, serving_campaign: int, tmp_path: Path
) -> None:  # noqa: ANN001
    columns = json.loads(lem("results", "columns", "--level", "request", "--json").stdout)
    assert [c["name"] for c in columns] == [*(c.name for c in COLUMNS["request"]), "config.*"]
    assert all(c["meaning"] for c in columns)
    meaning = "the run's unique key (also its Celery task id)"
    assert {"name": "run_key", "unit": "", "type": "text", "meaning": meaning} in columns
    path = tmp_path / "requests.json"
    assert lem("results", "export", str(serving_campaign), "--level", "request", "-o", str(path)).returncode == 0
    records = json.loads(path.read_text())
    assert len(records) == 16 and records[0]["tpot_s"] > 0 and records[0]["energy_j"] is None
    assert records[0]["arrival"].endswith("+00:00")


def test_a_campaign_without_serving_runs_gets_the_columns_and_a_note(lem, empty_campaign: int, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "none.csv"
    result = lem("results", "export", str(empty_campaign), "--level", "request", "-o", str(path))
    assert result.returncode == 0  # as the run and experiment levels on a campaign without rows
    assert f"0 request rows of campaign {empty_campaign}" in result.stdout
    assert f"campaign {empty_campaign} has no served requests" in result.stderr and "Traceback" not in result.stderr
    assert path.read_text().splitlines() == [",".join(c.name for c in REQUEST_COLUMNS)]
