"""LLenergyMeasure from Python: measure a block of one's own code, and plan, run and read campaigns.

Measure a block on this machine's GPUs (no service needed; on a host without NVML energy is None and the verdict
"n/a")::

    import lem

    with lem.measure("matmul") as m:
        sum(i * i for i in range(100_000))
    print(m.energy_j, m.verdict, m.j_per_token(1000))

Plan and run campaigns through the services (``lem campaign`` calls the same functions)::

    plan = lem.plan({"name": "tiny", "experiment": {"model": "random:llama-tiny"}, "grid": {"batch_size": [1, 2]}})
    print(len(plan.experiments), len(plan.skipped))
    handle = lem.run("configs/campaigns/example.yaml")    # needs the stack (`make up`)
    handle.wait(timeout=600)
    frame = lem.results(handle.id).to_pandas()

The campaign functions import the planner (SQLAlchemy, Celery) only when called: ``import lem`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from lem.measure import GpuSource, Measurement, NvmlGpus, Sampler, measure
from lem_shared.measure.analysis import Check, TelemetrySample, Thresholds, WindowAnalysis

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from lem_shared.config.plan import CampaignPlan
    from lem_shared.run_record import RunRecord

__all__ = [
    "Campaign",
    "CampaignFileError",
    "Check",
    "GpuSource",
    "Measurement",
    "NoSuchCampaign",
    "NvmlGpus",
    "Results",
    "Sampler",
    "TelemetrySample",
    "Thresholds",
    "WindowAnalysis",
    "campaign",
    "measure",
    "plan",
    "results",
    "run",
]


class CampaignFileError(ValueError):
    """A campaign that cannot run; ``problems`` are lines ``field: what is allowed`` (as ``lem campaign plan``)."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        super().__init__(f"invalid campaign {origin}:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class NoSuchCampaign(LookupError, ValueError):
    """A campaign id that names no campaign."""


PathOrDict = str | Path | Mapping[str, Any]


def _checked_id(campaign_id: int) -> int:
    from lem_planner.results import MAX_ID

    if isinstance(campaign_id, bool) or not isinstance(campaign_id, int) or not 1 <= campaign_id <= MAX_ID:
        raise ValueError(
            f"campaign_id must be a whole number from 1 to {MAX_ID} (see `lem campaign list`), got {campaign_id!r}"
        )
    return campaign_id


def plan(campaign: PathOrDict) -> CampaignPlan:
    """Expand a campaign (a YAML file's path, or the same as a mapping) into its experiments and the grid points
    skipped with their reasons; writes and dispatches nothing. Parameters are checked against the engine version
    the campaign pins or the live workers advertise (none reachable: the newest snapshot), as ``lem campaign plan``.
    Raises CampaignFileError (a ValueError) naming every bad field.

    >>> p = plan({"name": "tiny", "experiment": {"model": "random:llama-tiny"}, "grid": {"batch_size": [1, 2]}})
    >>> [e.batch_size for e in p.experiments]
    [1, 2]
    """
    from lem_planner.campaigns import advertised_engine_versions
    from lem_shared.config.errors import ConfigError
    from lem_shared.config.plan import load_plan, plan_campaign

    if isinstance(campaign, str | Path):
        origin = f"file {campaign}"
        try:
            return load_plan(campaign, advertised_engine_versions())
        except ConfigError as exc:
            raise CampaignFileError(origin, exc.problems) from None
    if isinstance(campaign, Mapping):
        try:
            return plan_campaign(dict(campaign), advertised_engine_versions())
        except ConfigError as exc:
            raise CampaignFileError("mapping", exc.problems) from None
    raise ValueError(
        f"campaign must be a campaign file's path or a mapping of its contents, got {type(campaign).__name__}"
    )


class Campaign:
    """A campaign in the database, by id: ``status()``, ``wait()``, ``cancel()``, ``results()``."""

    def __init__(self, campaign_id: int, name: str | None = None) -> None:
        self.id = _checked_id(campaign_id)
        self.name = name

    def status(self) -> dict[str, Any]:
        """What ``lem campaign status --json`` prints: status, counts per run status, ETA and every run."""
        from lem_planner.campaigns import campaign_status

        try:
            return campaign_status(self.id)
        except LookupError:
            raise NoSuchCampaign(f"no campaign {self.id}; `lem campaign list` shows the ones there are") from None

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> str:
        """Wait until the campaign ends and return its status (done, failed, cancelled); TimeoutError after
        ``timeout`` seconds (None: no limit), the campaign going on."""
        from lem_planner.campaigns import wait_for_campaign

        if timeout is not None and (isinstance(timeout, bool) or not math.isfinite(timeout) or timeout < 0):
            raise ValueError(f"timeout must be seconds (0 or more) or None for no limit, got {timeout!r}")
        self.status()  # an id that names nothing says so rather than waiting
        return str(wait_for_campaign(self.id, timeout, poll_s=poll_s))

    def cancel(self) -> dict[str, Any]:
        """Drop the queued runs and stop the running one, as ``lem campaign cancel --json``: ``{"cancelled",
        "queued", "stopping", "orphaned", "already"}`` (``already``: the status of a campaign that had ended)."""
        from lem_planner.campaigns import cancel_campaign
        from lem_planner.sender import sender

        try:
            counts = cancel_campaign(sender(), self.id)
        except LookupError:
            raise NoSuchCampaign(f"no campaign {self.id}; `lem campaign list` shows the ones there are") from None
        return {"campaign_id": self.id, "cancelled": not counts["already"], **counts}

    def results(self) -> Results:
        return results(self.id)

    def __repr__(self) -> str:
        return f"<lem.Campaign {self.id}{f' ({self.name})' if self.name else ''}>"


def campaign(campaign_id: int) -> Campaign:
    """The handle of an existing campaign (``lem campaign list`` shows them)."""
    handle = Campaign(campaign_id)
    handle.name = handle.status()["name"]
    return handle


def run(
    campaign: PathOrDict, wait: bool = False, timeout: float | None = None, require_workers: bool = True
) -> Campaign:
    """Plan a campaign, write its manifest and dispatch its runs, as ``lem campaign run``; returns its handle
    (``wait=True``: after it ended, or TimeoutError after ``timeout`` s). ``require_workers``: refuse (a
    RuntimeError saying what to start) when a backend it uses, or the control worker, has no live worker, or no
    live worker owns the GPUs an experiment needs (the checks of ``lem campaign run``)."""
    from lem_planner.campaigns import gpu_shortfall, largest_live_gpu_sets, missing_workers, start_campaign
    from lem_planner.sender import sender

    planned = plan(campaign)
    if require_workers:
        experiments = planned.experiments
        problem = missing_workers(sender(), experiments) or gpu_shortfall(experiments, largest_live_gpu_sets())
        if problem:
            raise RuntimeError(problem.replace("pass --no-require-workers", "pass require_workers=False"))
    campaign_id, _ = start_campaign(planned.campaign, planned.experiments)
    handle = Campaign(campaign_id, planned.campaign.name)
    if wait:
        handle.wait(timeout)
    return handle


class Results(Sequence["RunRecord"]):
    """A campaign's run records (``lem_shared.run_record.RunRecord``, in experiment then cycle order), with the
    export's typed tables: ``to_arrow()`` (the Parquet export's schema) and ``to_pandas()``."""

    def __init__(self, campaign_id: int, records: list[RunRecord]) -> None:
        self.campaign_id, self.records = campaign_id, records

    @overload
    def __getitem__(self, index: int) -> RunRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[RunRecord]: ...
    def __getitem__(self, index: int | slice) -> RunRecord | list[RunRecord]:
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.records)

    def to_dicts(self) -> list[dict[str, Any]]:
        """What ``lem results show --json`` prints, one mapping per run."""
        return [record.shown() for record in self.records]

    def to_arrow(self) -> pyarrow.Table:
        """One row per run: the export's run columns and ``config.*``, typed as ``lem results export`` types them
        (numbers float64/int64 even when every value is empty, timestamps UTC, units in the field metadata)."""
        from lem_planner.export import run_rows, typed_table
        from lem_shared.run_record import RUN_COLUMNS

        return typed_table(run_rows(self.campaign_id, self.records), RUN_COLUMNS)

    def to_pandas(self) -> pandas.DataFrame:
        """``to_arrow()`` as a DataFrame: floats float64 (NaN when empty), integers and booleans pandas' nullable
        Int64 and boolean (an empty one stays an integer), timestamps datetime64[us, UTC]."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas (or use to_arrow)") from None
        import pyarrow as pa

        nullable = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
        return self.to_arrow().to_pandas(types_mapper=nullable.get)

    def __repr__(self) -> str:
        return f"<lem.Results campaign {self.campaign_id}: {len(self.records)} runs>"


def results(campaign_id: int) -> Results:
    """The campaign's run records, as ``lem results show`` reads them; NoSuchCampaign (a ValueError and a
    LookupError) when the id names none."""
    from lem_planner.results import campaign_exists, load_runs

    if not campaign_exists(_checked_id(campaign_id)):
        raise NoSuchCampaign(f"no campaign {campaign_id}; `lem campaign list` shows the ones there are")
    return Results(campaign_id, load_runs(campaign_id))
