"""The measurement protocol end to end on a real GPU, on the project's own code path, for any backend.

What runs, all of it the code the services run: `lem-telemetry` (python -m lem_telemetry.main) sampling NVML
into a database; the manifest written by the planner's `create_campaign`; each run claimed, measured in the
spawned engine host and recorded by the worker runtime's `execute_run` (what the Celery task calls); each run
finalised by the control worker's `finalise_run` (window analysis, baselines, verdict). Only Celery's transport
is left out: the GPU machine has no Redis, so the runs are driven in the campaign's order by this script. The
database is SQLite there (no PostgreSQL); pass --database-url to use PostgreSQL where it exists.

    python bench/h200_protocol.py --model random:llama-1b --batch-sizes 1 8 64 --cycles 5 --out DIR
    python bench/h200_protocol.py --campaign configs/campaigns/audit-pytorch-cuda.yaml --out DIR
    python bench/h200_protocol.py --campaign configs/campaigns/cross-engine-h200.yaml --budget-s 500 --out DIR
    python bench/h200_protocol.py --resume --budget-s 500 --out DIR      # the next call: the runs still pending

With --campaign, the campaign file's experiments run instead of the batch-size sweep; a run that fails is reported
with its error and the next one runs. Each backend's adapter runs in its own engine host, as its worker runs it
(a campaign over several backends keeps one engine host per backend alive, so give vLLM a
gpu_memory_utilization that leaves room for the others). --budget-s starts no run after that many seconds, so a
long campaign is split over several device calls: --resume continues the database's latest campaign.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-1b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--batches", type=int, default=2, help="batches in one pass of the workload")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--baseline-idle-s", type=float, default=30.0)
    parser.add_argument(
        "--cache-implementation",
        choices=["dynamic", "static"],
        default="dynamic",
        help="static: transformers compiles the decoding step (CUDA graphs)",
    )
    parser.add_argument("--campaign", type=Path, help="run this campaign file's experiments instead of the sweep")
    parser.add_argument(
        "--experiments",
        metavar="A:B",
        help="with --campaign: only experiments A..B-1 (a slice, to split a long campaign over several device calls)",
    )
    parser.add_argument("--budget-s", type=float, help="start no run after this many seconds (the rest: --resume)")
    parser.add_argument("--resume", action="store_true", help="run the pending runs of the database's latest campaign")
    parser.add_argument("--database-url", default="sqlite:////tmp/lem_h200.db")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--reanalyse", metavar="DATABASE_URL", help="re-finalise a recorded database, run nothing")
    args = parser.parse_args()
    if args.reanalyse:
        args.out.mkdir(parents=True, exist_ok=True)
        reanalyse(args.reanalyse, args.out)
        return

    os.environ["LEM_DATABASE_URL"] = args.database_url
    os.environ.setdefault("LEM_DEVICE", "cuda:0")
    from lem_planner.campaigns import create_campaign
    from lem_planner.finalise import finalise_run
    from lem_planner.results import run_records as records_of
    from lem_shared.config.plan import load_plan, plan_campaign
    from lem_shared.db.migrate import upgrade
    from lem_shared.runtime.engine_host import EngineHost
    from lem_shared.runtime.worker import GpuState, execute_run
    from lem_shared.settings import get_settings

    if args.database_url.startswith("sqlite:") and not args.resume:
        Path(args.database_url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    upgrade(args.database_url)
    args.out.mkdir(parents=True, exist_ok=True)
    telemetry_log = open(args.out / "telemetry.log", "a")  # noqa: SIM115 - open for the daemon's lifetime
    telemetry = subprocess.Popen(
        [sys.executable, "-m", "lem_telemetry.main"],
        stdout=telemetry_log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    time.sleep(3)  # let it log its energy-read cost and start sampling

    if args.resume:
        campaign_id, requests = pending_runs()
    else:
        if args.campaign:
            plan = load_plan(args.campaign)
            campaign, experiments = plan.campaign, plan.experiments
            if args.experiments:
                start, _, stop = args.experiments.partition(":")
                experiments = experiments[int(start or 0) : int(stop) if stop else None]
        else:
            campaign, experiments = sweep(plan_campaign, args)
        campaign_id, requests = create_campaign(campaign, experiments)
    settings = get_settings()
    engines: dict[str, EngineHost] = {}
    state = GpuState()
    started = time.time()
    try:
        for request in requests:
            if args.budget_s is not None and time.time() - started > args.budget_s:
                print(
                    f"budget of {args.budget_s:.0f} s spent: {len(requests) - requests.index(request)} runs left "
                    "pending (--resume runs them)",
                    flush=True,
                )
                break
            backend = request.experiment["backend"]
            if backend not in engines:
                engines[backend] = EngineHost(ADAPTERS[backend], settings.device, settings.run_timeout_s)
            run_id, status = execute_run(engines[backend], request, "h200-bench@device", state)
            assert run_id is not None
            finalise_run(run_id, wait_s=15)
            record = next(r for r in records_of(campaign_id) if r["run_id"] == run_id)
            print(
                f"{label(request.experiment):<40} cycle={request.cycle}  {record['status']:<6} "
                f"{_f(record['tokens_per_s'], '.0f')} tok/s  {_f(record['energy_j'], '.1f')} J  "
                f"{_f(record['j_per_token'] and record['j_per_token'] * 1e3, '.2f')} mJ/tok  "
                f"adj {_f(record['energy_adjusted_j'], '.1f')} J  mean {_f(record['mean_power_w'], '.0f')} W  "
                f"idle {_f(record['idle_before_w'], '.0f')}/{_f(record['idle_after_w'], '.0f')} W  "
                f"deep {_f(record['deep_idle_power_w'], '.0f')} W  warmup {record['warmup_iterations']}"
                f"{'' if record['warmup_converged'] else '(cap)'}  passes {record['passes']}  "
                f"verdict {record['verdict']}  {record['error'] or ''}",
                flush=True,
            )
            if record["phase_split"] or record["flops"]:
                print("    " + phases_line(record), flush=True)
    finally:
        for engine in engines.values():
            engine.stop()
        telemetry.send_signal(signal.SIGTERM)
        telemetry.wait(30)
        telemetry_log.close()

    report(
        campaign_id, args.out, {"command": " ".join(sys.argv), "model": args.model, "elapsed_s": time.time() - started}
    )


# Each backend's engine adapter, as its worker's entry module names it.
ADAPTERS = {
    "pytorch": "lem_worker_pytorch.adapter:TransformersAdapter",
    "vllm": "lem_worker_vllm.adapter:VllmAdapter",
    "trtllm": "lem_worker_trt.adapter:TrtLlmAdapter",
}


def pending_runs() -> tuple[int, list]:
    """The latest campaign's runs not yet ended, in dispatch order, as the requests the dispatcher would send."""
    from sqlalchemy import select

    from lem_shared.db.models import Campaign, Experiment, Run
    from lem_shared.db.session import session_scope
    from lem_shared.dispatch import run_request

    with session_scope() as s:
        campaign = s.scalars(select(Campaign).order_by(Campaign.id.desc())).first()
        if campaign is None:
            raise SystemExit("--resume: the database holds no campaign")
        runs = s.scalars(
            select(Run).where(Run.campaign_id == campaign.id, Run.status == "pending").order_by(Run.position)
        ).all()
        return campaign.id, [run_request(run, s.get(Experiment, run.experiment_id), campaign) for run in runs]


def sweep(plan_campaign, args: argparse.Namespace) -> tuple:  # noqa: ANN001
    """The batch-size sweep of issue 3's protocol, with the same number of batches per pass at every size."""
    plan = plan_campaign(
        {
            "name": "h200-protocol",
            "cycles": args.cycles,
            "experiment": {
                "backend": "pytorch",
                "model": args.model,
                "dtype": "bfloat16",
                "workload": {
                    "num_prompts": max(args.batch_sizes),
                    "input_len": args.input_len,
                    "output_len": args.output_len,
                },
                "measurement": {"baseline_idle_s": args.baseline_idle_s},
                "pytorch": {"generation": {"cache_implementation": args.cache_implementation}},
            },
            "grid": {"batch_size": args.batch_sizes},
        }
    )
    campaign, experiments = plan.campaign, plan.experiments
    # The same number of batches per pass at every batch size (a grid would share one prompt count).
    return campaign, [
        e.model_copy(update={"workload": e.workload.model_copy(update={"num_prompts": e.batch_size * args.batches})})
        for e in experiments
    ]


def phases_line(record: dict) -> str:
    """Prefill and decode per prompt (time, energy +- u, tokens/s, mJ/token, MFU), and counted/analytic FLOPs."""
    parts = []
    for phase, f in ((record["phase_split"] or {}).get("per_prompt") or {}).items():
        energy = "-" if f.get("energy_j") is None else f"{f['energy_j']:.3f}+-{f['energy_uncertainty_j']:.3f} J"
        bandwidth = (f.get("memory") or {}).get("bandwidth_utilisation")
        parts.append(
            f"{phase}: {f['time_s'] * 1e3:.1f} ms {energy} {_f(f.get('tokens_per_s'), '.0f')} tok/s "
            f"{_f(f.get('j_per_token') and f['j_per_token'] * 1e3, '.3f')} mJ/tok "
            f"MFU {_f(f.get('mfu') and f['mfu'] * 100, '.1f')} %"
            + (f" bw {bandwidth * 100:.0f} %" if bandwidth is not None else "")
        )
    ratio = (record["flops"] or {}).get("ratio") or {}
    if ratio:
        parts.append("counted/analytic FLOPs " + " ".join(f"{k} {v:.3f}" for k, v in ratio.items()))
    return " | ".join(parts)


def label(config: dict) -> str:
    """What sets an experiment apart: backend, batch size, dtype and the backend parameters it sets."""
    backend = config["backend"]
    parts = [backend, f"bs={config['batch_size']}", config["dtype"]]
    for group, values in (config.get(backend) or {}).items():
        if isinstance(values, dict):
            parts += [f"{group}.{k}={v}" for k, v in values.items() if v is not None]
        elif values is not None:
            parts.append(f"{group}={values}")
    return " ".join(parts)


def reanalyse(database_url: str, out: Path) -> None:
    """Finalise every measured run of a recorded database again with the current analysis code (the raw
    telemetry is kept, so a corrected check can be re-applied to what the GPU really did)."""
    os.environ["LEM_DATABASE_URL"] = database_url
    from sqlalchemy import select

    from lem_planner.finalise import energy_fields, run_facts, steady_fields, steady_of, store_finalised
    from lem_shared.config.schema import ExperimentConfig
    from lem_shared.db.models import Campaign, Experiment, Run, RunMetrics
    from lem_shared.db.session import session_scope

    with session_scope() as s:
        campaign_id = s.scalars(select(Campaign.id).order_by(Campaign.id.desc())).first()
        runs = s.scalars(select(Run).where(Run.campaign_id == campaign_id, Run.status == "done")).all()
        jobs = [(run, s.get(RunMetrics, run.id), s.get(Experiment, run.experiment_id), run.requests) for run in runs]
        s.expunge_all()
    for run, metrics, experiment, _ in jobs:
        config = ExperimentConfig.model_validate(experiment.config)
        steady = steady_of(run, config.workload.max_concurrency)
        fields = {
            **steady_fields(steady, run.window_start),
            **energy_fields(run, metrics, config.measurement, 0, run_facts(run, metrics, config), steady),
        }
        with session_scope() as s:
            store_finalised(s, run, fields)
    report(campaign_id, out, {"command": " ".join(sys.argv), "reanalysed": database_url})


def report(campaign_id: int, out: Path, meta: dict) -> None:
    """Per experiment (runs of all cycles together): tokens/s, J/token and its CV, checks and verdicts."""
    from lem_planner.results import run_records

    records = run_records(campaign_id)
    summary = []
    for name in dict.fromkeys(label(r["experiment"]) for r in records):
        rows = [r for r in records if label(r["experiment"]) == name and r["energy_j"] is not None]
        if not rows:
            errors = {r["error"] for r in records if label(r["experiment"]) == name}
            print(f"{name}: no run with energy: {errors}")
            summary.append({"experiment": name, "runs": 0, "errors": sorted(e for e in errors if e)})
            continue
        jpt = [r["j_per_token"] for r in rows]
        checks = [c for r in rows for c in (r["checks"] or []) if c["status"] in ("warning", "fail")]
        analysis_gap = [
            100 * (r["energy_power_integral_j"] - r["energy_j"]) / r["energy_j"]
            for r in rows
            if r["energy_power_integral_j"]
        ]
        summary.append(
            {
                "experiment": name,
                "batch_size": rows[0]["experiment"]["batch_size"],
                "runs": len(rows),
                "tokens_per_s_mean": statistics.fmean(r["tokens_per_s"] for r in rows),
                "j_per_token_mean": statistics.fmean(jpt),
                "j_per_token_cv_pct": 100 * statistics.stdev(jpt) / statistics.fmean(jpt) if len(jpt) > 1 else None,
                "energy_adjusted_j_per_token_mean": statistics.fmean(
                    r["energy_adjusted_j"] / r["output_tokens"] for r in rows if r["energy_adjusted_j"] is not None
                ),
                "integral_vs_counter_pct_mean": statistics.fmean(analysis_gap) if analysis_gap else None,
                "mean_power_w": statistics.fmean(r["mean_power_w"] for r in rows),
                "deep_idle_w": rows[0]["deep_idle_power_w"],
                "idle_before_w_mean": _mean([r["idle_before_w"] for r in rows]),
                "idle_after_w_mean": _mean([r["idle_after_w"] for r in rows]),
                "verdicts": {v: sum(1 for r in rows if r["verdict"] == v) for v in ("valid", "warning", "invalid")},
                "flagged_checks": sorted({f"{c['name']}: {c['status']}" for c in checks}),
            }
        )
    result = {"what": __doc__.splitlines()[0], **meta, "summary": summary, "runs": records}
    (out / "h200_protocol.json").write_text(json.dumps(result, indent=2, default=str))
    print()
    for s in summary:
        if not s["runs"]:
            continue
        print(
            f"{s['experiment']}: {s['runs']} runs, {s['tokens_per_s_mean']:.0f} tok/s, "
            f"{s['j_per_token_mean'] * 1e3:.2f} mJ/token (CV {_f(s['j_per_token_cv_pct'], '.2f')} %), "
            f"adjusted {s['energy_adjusted_j_per_token_mean'] * 1e3:.2f} mJ/token, "
            f"∫P vs counter {_f(s['integral_vs_counter_pct_mean'], '+.2f')} %, {s['mean_power_w']:.0f} W, "
            f"deep idle {_f(s['deep_idle_w'], '.0f')} W, idle before/after {_f(s['idle_before_w_mean'], '.0f')}/"
            f"{_f(s['idle_after_w_mean'], '.0f')} W, verdicts {s['verdicts']}, flagged {s['flagged_checks']}"
        )


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
