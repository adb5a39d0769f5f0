"""Per run of a recorded campaign database (bench/h200_protocol.py's): the window energy from the edge reads against
telemetry's interpolated counter and ∫P dt with each power reading, for the full window and the prefill-only one.

    python bench/edges_from_runs.py sqlite:///bench/results/h200_edges/lem_edges.db > table.md
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta


def main() -> None:
    os.environ["LEM_DATABASE_URL"] = sys.argv[1]
    from sqlalchemy import select

    from lem_shared.db.models import GpuSample, Run
    from lem_shared.db.session import session_scope
    from lem_shared.dispatch import aware
    from lem_shared.measure.energy import Sample, counter_energy, edge_energy, power_integral

    def samples(uuid: str, start: float, end: float) -> list[Sample]:
        with session_scope() as s:
            rows = s.execute(
                select(GpuSample.time, GpuSample.energy_mj, GpuSample.power_w, GpuSample.power_instant_w)
                .where(GpuSample.gpu_uuid == uuid)
                .order_by(GpuSample.time)
            ).all()
        margin = timedelta(seconds=2).total_seconds()
        return [
            Sample(aware(t).timestamp(), e, p, i)
            for t, e, p, i in rows
            if start - margin <= aware(t).timestamp() <= end + margin
        ]

    def pct(value: float | None, reference: float) -> str:
        return "-" if value is None else f"{100 * (value - reference) / reference:+.2f} %"

    with session_scope() as s:
        runs = s.scalars(select(Run).where(Run.status == "done").order_by(Run.id)).all()
        s.expunge_all()
    print("| run | window | s | edge reads J | telemetry counter | ∫P instant | ∫P average | edge reads ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        phases = run.phases or {}
        assert run.window_start is not None and run.window_end is not None and run.gpu_uuid is not None
        windows = [
            ("full", aware(run.window_start).timestamp(), aware(run.window_end).timestamp(), phases.get("edges"))
        ]
        prefill = phases.get("prefill")
        if prefill:
            windows.append(("prefill", *prefill["window"], prefill.get("edges")))
        for name, start, end, edges in windows:
            joules, _ = edge_energy(edges, run.gpu_uuid)
            if joules is None:
                continue
            got = samples(run.gpu_uuid, start, end)
            telemetry = counter_energy(got, start, end)[0]
            reads = f"{1e3 * edges['start']['read_s']:.1f} / {1e3 * edges['end']['read_s']:.1f}"
            print(
                f"| {run.id} | {name} | {end - start:.2f} | {joules:.1f} | {pct(telemetry, joules)} | "
                f"{pct(power_integral(got, start, end, 'instant'), joules)} | "
                f"{pct(power_integral(got, start, end, 'average'), joules)} | {reads} |"
            )


if __name__ == "__main__":
    main()
