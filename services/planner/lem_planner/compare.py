"""`lem results compare A B`: two experiments (``CAMPAIGN:INDEX``) or two campaigns (``CAMPAIGN``) side by side.

Campaigns are compared experiment by experiment: experiments with the same config hash are paired, the rest in
order of their index. For each pair and each summary metric: both means with their 95 % bootstrap intervals,
the difference of B from A in %, and whether the intervals overlap (no overlap: a difference the repetitions
support; overlap: not shown to differ). Both sides are campaigns or both experiments; an experiment of one
campaign without a partner in the other is listed as unpaired. Under 3 cycles an interval comes with the warning
``show`` gives (``summary_notes``); a metric without an interval says why (no energy without NVML, 1 cycle).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from lem_planner.results import (
    MAX_ID,
    SUMMARY_METRICS,
    campaign_exists,
    run_records,
    summarise_experiment,
    summary_notes,
)
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
            raise CompareError(f"{text!r}: give a campaign id (12) or an experiment as campaign:index (12:3)") from None
        if not 1 <= side.campaign_id <= MAX_ID:  # asking the database would fail: ids are PostgreSQL integers
            raise CompareError(
                f"{text!r}: no campaign {side.campaign_id} (campaign ids run from 1 to {MAX_ID}; "
                "see `lem campaign list`)"
            )
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
        raise CompareError(
            f"{side.campaign_id}:{side.experiment_index}: campaign {side.campaign_id} has no "
            f"experiment {side.experiment_index} (it has {', '.join(map(str, sorted(by_experiment)))})"
        )
    return [
        {**summarise_experiment(by_experiment[i], resamples=resamples, seed=seed), "config_hash": hashes[i]}
        for i in indices
    ]


def _pairs(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[list[tuple[dict, dict, str]], list, list]:
    """Same config hash first, then the remaining ones in index order; and the experiments of A and of B left
    without a partner."""
    pairs, left = [], list(b)
    for x in a:
        match = next((y for y in left if y["config_hash"] == x["config_hash"]), None)
        if match is not None:
            pairs.append((x, match, "same config"))
            left.remove(match)
    unpaired = [x for x in a if all(x is not p[0] for p in pairs)]
    pairs += [(x, y, "by position") for x, y in zip(unpaired, left, strict=False)]
    return (sorted(pairs, key=lambda p: p[0]["experiment_index"]), unpaired[len(left) :], left[len(unpaired) :])


def _overlap(x: dict[str, Any], y: dict[str, Any]) -> bool | None:
    if None in (x["ci_low"], x["ci_high"], y["ci_low"], y["ci_high"]):
        return None
    return x["ci_low"] <= y["ci_high"] and y["ci_low"] <= x["ci_high"]


@dataclass(frozen=True)
class Comparison:
    rows: list[dict[str, Any]]  # one per (pair, metric)
    unpaired: list[str]  # "campaign:index" of the experiments without a partner
    notes: dict[str, list[str]]  # "campaign:index" -> its summary_notes (interval warnings, missing figures)


def compare(a: str, b: str, resamples: int = 2000, seed: int = 0) -> Comparison:
    """Per (pair, metric) a row: ``a``/``b`` experiment, means and CIs, their warnings and reasons, ``diff_pct``
    (B vs A) and ``ci_overlap`` (None when either side has no interval: ``a_reason``/``b_reason`` say why)."""
    side_a, side_b = Side.parse(a), Side.parse(b)
    if (side_a.experiment_index is None) != (side_b.experiment_index is None):
        raise CompareError(
            f"{a} {b}: compare two campaigns (12 13) or two experiments (12:0 13:0), not a campaign with an experiment"
        )
    pairs, alone_a, alone_b = _pairs(_summaries(side_a, resamples, seed), _summaries(side_b, resamples, seed))
    rows, notes = [], {}
    for x, y, how in pairs:
        name_a = f"{side_a.campaign_id}:{x['experiment_index']}"
        name_b = f"{side_b.campaign_id}:{y['experiment_index']}"
        notes.update({name_a: summary_notes(x), name_b: summary_notes(y)})
        for metric in SUMMARY_METRICS:
            mx, my = x["metrics"][metric], y["metrics"][metric]
            diff = (
                100 * (my["mean"] - mx["mean"]) / mx["mean"]
                if mx["mean"] not in (None, 0) and my["mean"] is not None
                else None
            )
            rows.append(
                {
                    "a": name_a,
                    "b": name_b,
                    "paired": how,
                    "metric": metric,
                    **{
                        f"{side}_{key}": m[key]
                        for side, m in (("a", mx), ("b", my))
                        for key in ("mean", "ci_low", "ci_high", "n", "warning", "reason")
                    },
                    "diff_pct": diff,
                    "ci_overlap": _overlap(mx, my),
                }
            )
    unpaired = [f"{side_a.campaign_id}:{x['experiment_index']}" for x in alone_a] + [
        f"{side_b.campaign_id}:{y['experiment_index']}" for y in alone_b
    ]
    return Comparison(rows=rows, unpaired=unpaired, notes={k: v for k, v in notes.items() if v})
