"""Queries over what was measured (run spans, GPU telemetry), shared by the worker's pacing and the finaliser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from lem_shared.db.models import GpuSample, Run
from lem_shared.db.session import session_scope


def deep_idle_span(campaign_id: int, gpu_uuid: str) -> tuple[float, float] | None:
    """The deep-idle span measured before a campaign's first run on a GPU (whichever run of it carries it)."""
    with session_scope() as s:
        phases = s.scalars(
            select(Run.phases)
            .where(Run.campaign_id == campaign_id, Run.gpu_uuid == gpu_uuid, Run.phases.is_not(None))
            .order_by(Run.id)
        ).all()
    span = next((p["deep_idle"] for p in phases if p and p.get("deep_idle")), None)
    return (float(span[0]), float(span[1])) if span else None


def idle_temperature(campaign_id: int, gpu_uuid: str) -> float | None:
    """The GPU's idle temperature: the mean over its deep idle in this campaign, else the lowest of the last
    15 minutes of telemetry."""
    deep = deep_idle_span(campaign_id, gpu_uuid)
    with session_scope() as s:
        temps = GpuSample.temperature_c
        if deep:
            start, end = (datetime.fromtimestamp(t, UTC) for t in deep)
            idle = s.scalar(
                select(func.avg(temps)).where(GpuSample.gpu_uuid == gpu_uuid, GpuSample.time.between(start, end))
            )
            if idle is not None:
                return float(idle)
        since = datetime.now(UTC) - timedelta(minutes=15)
        low = s.scalar(select(func.min(temps)).where(GpuSample.gpu_uuid == gpu_uuid, GpuSample.time >= since))
    return float(low) if low is not None else None
