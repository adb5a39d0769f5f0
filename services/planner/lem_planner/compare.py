"""`lem results compare A B`: two experiments (``CAMPAIGN:INDEX``) or two campaigns (``CAMPAIGN``) side by side.

Campaigns are compared experiment by experiment: experiments with the same config hash are paired, the rest in
order of their index. For each pair and each summary metric: both means with their 95 % bootstrap intervals,
the difference of B from A in %, and whether the intervals overlap (no overlap: a difference the repetitions
support; overlap: not shown to differ).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from lem_planner.results import MAX_ID, SUMMARY_METRICS, campaign_exists, run_records, summarise_experiment
from lem_shared.db.models import Experiment
from lem_shared.db.session import session_scope


class CompareError(ValueError):
    """A side that names no campaign or experiment."""


@dataclass(frozen=True)
class Side:
    campaign_id: int
    experiment_index: int | None  # None: the whole campaign

    @classmethod
    def parse(cls, text: str) -> Side:
        campaign, sep, index = text.partition(":")
        try:
            side = cls(int(campaign), int(index) if sep else None)
        except ValueError:
            raise CompareError(f"{text!r}: give a campaign id (12) or an experiment as campaign:index (12:3)") \
                from None
        if not 1 <= side.campaign_id <= MAX_ID:  # asking the database would fail: ids are PostgreSQL integers
            raise CompareError(f"{text!r}: no campaign {side.campaign_id} (campaign ids run from 1 to {MAX_ID}; "
                               "see `lem campaign list`)")
        if not campaign_exists(side.campaign_id):
            raise CompareError(f"{text!r}: no campaign {side.campaign_id} (see `lem campaign list`)")
        return side


def _summaries(side: Side, resamples: int, seed: int) -> list[dict[str, Any]]:
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in run_records(side.campaign_id):
        by_experiment[record["experiment_index"]].append(record)
    with session_scope() as s:
        hashes = {e.index: e.config_hash for e in s.query(Experiment).filter_by(campaign_id=side.campaign_id)}
    indices = sorted(by_experiment) if side.experiment_index is None else [side.experiment_index]
    if side.experiment_index is not None and side.experiment_index not in by_experiment:
        raise CompareError(f"{side.campaign_id}:{side.experiment_index}: campaign {side.campaign_id} has no "
                           f"experiment {side.experiment_index} (it has {', '.join(map(str, sorted(by_experiment)))})")
    return [{**summarise_experiment(by_experiment[i], resamples=resamples, seed=seed), "config_hash": hashes[i]}
            for i in indices]


def _pairs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[dict, dict, str]]:
    """Same config hash first, then the remaining ones in index order."""
    pairs, left = [], list(b)
    for x in a:
        match = next((y for y in left if y["config_hash"] == x["config_hash"]), None)
        if match is not None:
            pairs.append((x, match, "same config"))
            left.remove(match)
    unpaired = [x for x in a if all(x is not p[0] for p in pairs)]
    pairs += [(x, y, "by position") for x, y in zip(unpaired, left, strict=False)]
    return sorted(pairs, key=lambda p: p[0]["experiment_index"])


def _overlap(x: dict[str, Any], y: dict[str, Any]) -> bool | None:
    if None in (x["ci_low"], x["ci_high"], y["ci_low"], y["ci_high"]):
        return None
    return x["ci_low"] <= y["ci_high"] and y["ci_low"] <= x["ci_high"]


def compare(a: str, b: str, resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (pair, metric): ``a``/``b`` experiment, means and CIs, ``diff_pct`` (B vs A) and
    ``ci_overlap`` (None when either side has fewer than 2 runs with a figure)."""
    side_a, side_b = Side.parse(a), Side.parse(b)
    rows = []
    for x, y, how in _pairs(_summaries(side_a, resamples, seed), _summaries(side_b, resamples, seed)):
        for metric in SUMMARY_METRICS:
            mx, my = x["metrics"][metric], y["metrics"][metric]
            diff = (100 * (my["mean"] - mx["mean"]) / mx["mean"]
                    if mx["mean"] not in (None, 0) and my["mean"] is not None else None)
            rows.append({
                "a": f"{side_a.campaign_id}:{x['experiment_index']}",
                "b": f"{side_b.campaign_id}:{y['experiment_index']}",
                "paired": how, "metric": metric,
                "a_mean": mx["mean"], "a_ci_low": mx["ci_low"], "a_ci_high": mx["ci_high"], "a_n": mx["n"],
                "b_mean": my["mean"], "b_ci_low": my["ci_low"], "b_ci_high": my["ci_high"], "b_n": my["n"],
                "diff_pct": diff, "ci_overlap": _overlap(mx, my),
            })
    return rows
