"""Serving runs through the whole system: requests arriving at a seeded rate into transformers' continuous
batching on the CPU, real prompts from ShareGPT tokenised by the offline BPE, per-request rows and figures."""

from __future__ import annotations

import json
import statistics

import pytest
from sqlalchemy import select

from lem_shared.db.models import RequestTimingRow, Run
from lem_shared.db.session import session_scope


def test_each_request_is_stored_with_its_times_and_tokens(serving_campaign: int) -> None:
    with session_scope() as s:
        runs = s.scalars(select(Run).where(Run.campaign_id == serving_campaign)).all()
        assert len(runs) == 2 and all(r.status == "done" for r in runs), [(r.status, r.error) for r in runs]
        for run in runs:
            rows = s.scalars(select(RequestTimingRow).where(RequestTimingRow.run_id == run.id)).all()
            assert sorted(r.request_index for r in rows) == list(range(8))
            for row in rows:
                assert row.output_tokens == 12 and len(row.token_times) == 12
                assert 4 <= row.prompt_tokens <= 96  # ShareGPT prompts, filtered to input_len
                assert row.first_token is not None and row.arrival <= row.first_token <= row.finish
                assert row.token_times == sorted(row.token_times)
            steps = (run.phases or {})["serving"]["steps"]
            prefill = sum(t[0] for step in steps for t in step[4].values())
            decode = sum(t[1] for step in steps for t in step[4].values())
            assert prefill == sum(r.prompt_tokens for r in rows) and decode == 8 * 11
            assert max(step[2] for step in steps) <= 4  # workload.max_concurrency


def test_stored_figures_match_those_worked_by_hand_from_the_requests(serving_campaign: int) -> None:
    with session_scope() as s:
        for run in s.scalars(select(Run).where(Run.campaign_id == serving_campaign)).all():
            rows = s.scalars(select(RequestTimingRow).where(RequestTimingRow.run_id == run.id)).all()
            metrics = run.metrics
            assert metrics is not None
            ttft = [r.first_token - r.arrival for r in rows]
            tpot = [(r.finish - r.first_token) / (r.output_tokens - 1) for r in rows]
            e2e = [r.finish - r.arrival for r in rows]
            assert metrics.ttft_mean_s == pytest.approx(statistics.fmean(ttft), rel=1e-9)
            assert metrics.tpot_mean_s == pytest.approx(statistics.fmean(tpot), rel=1e-9)
            assert metrics.latency_mean_s == pytest.approx(statistics.fmean(e2e), rel=1e-9)
            assert metrics.latency_p50_s == pytest.approx(statistics.median(e2e), rel=1e-9)
            assert metrics.goodput_rps == pytest.approx(8 / metrics.duration_s, rel=1e-9)  # all meet a 1 min SLO
            assert metrics.slo_attainment == 1.0
            assert metrics.tokens_per_s == pytest.approx(96 / metrics.duration_s, rel=1e-9)


def test_results_show_the_serving_figures(serving_campaign: int, lem) -> None:  # noqa: ANN001
    runs = json.loads(lem("results", "show", str(serving_campaign), "--json").stdout)
    assert len(runs) == 2
    for run in runs:
        assert run["requests"] == 8 and run["output_tokens"] == 96
        assert 0 < run["ttft_p50_s"] <= run["latency_p50_s"]
        assert run["tpot_mean_s"] > 0 and run["tpot_p99_s"] >= run["tpot_p50_s"]
        assert run["goodput_rps"] > 0  # every request meets a one-minute SLO
        assert 0 <= run["steady_start_s"] < run["steady_end_s"] <= run["duration_s"] + 1e-6
        assert run["steady_method"]
        assert run["energy_j"] is None and "no NVML" in run["energy_note"]  # a CPU run: honest n/a
