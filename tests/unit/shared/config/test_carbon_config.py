"""The campaign's carbon section: a constant, or a CSV read at planning into the campaign (workers never need it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lem_shared.config.errors import ConfigError
from lem_shared.config.plan import load_plan, plan_campaign


def test_a_constant_intensity_plans_and_stays_out_of_campaigns_without_one() -> None:
    plan = plan_campaign({"name": "c", "carbon": {"g_per_kwh": 412}})
    assert plan.campaign.carbon is not None and plan.campaign.carbon.g_per_kwh == 412
    assert "carbon" not in plan_campaign({"name": "c"}).campaign.model_dump(mode="json")


def test_a_csv_is_read_relative_to_the_campaign_file_into_its_series(tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text("timestamp,g_per_kwh\n2026-12-01T00:00Z,300\n2026-12-01T02:00:00+01:00,500\n")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "carbon": {"csv": "grid.csv"}}))
    carbon = load_plan(path).campaign.carbon
    assert carbon is not None and carbon.series is not None and carbon.source is not None
    assert [tuple(p) for p in carbon.series] == [(1796083200.0, 300.0), (1796086800.0, 500.0)]  # 00:00Z, 01:00Z
    assert carbon.source.startswith("csv ") and "2 points" in carbon.source


@pytest.mark.parametrize(
    "carbon, expected",
    [
        ({}, "carbon: give g_per_kwh or csv (one of them)"),
        ({"g_per_kwh": 300, "csv": "x.csv"}, "give g_per_kwh or csv, not both"),
        ({"g_per_kwh": -1}, "carbon.g_per_kwh: must be >= 0"),
        ({"g_per_kwh": 5000}, "carbon.g_per_kwh: must be <= 2000"),
        ({"csv": "missing.csv"}, "carbon.csv:"),
        ({"csv": "dup.csv"}, "duplicates line 2"),
    ],
)
def test_a_bad_carbon_section_is_refused_naming_the_field(carbon: dict, expected: str, tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("timestamp,g_per_kwh\n2026-12-01T00:00Z,300\n2026-12-01T01:00:00+01:00,500\n")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "carbon": carbon}))
    with pytest.raises(ConfigError) as caught:
        load_plan(path)
    assert expected in "\n".join(caught.value.problems)


@pytest.mark.parametrize(
    "series, expected",
    [
        ([[1796083200.0, 5000.0]], "2000"),
        ([[1796083200.0, 300.0], [1796083100.0, 300.0]], "sort"),
        ([[1e20, 300.0]], "Unix"),
        ([], "no points"),
    ],
)
def test_an_inline_series_is_checked_as_a_csv_is(series: list, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_campaign({"name": "c", "carbon": {"series": series, "source": "inline"}})
    assert expected in "\n".join(caught.value.problems)
