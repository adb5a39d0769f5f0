"""Where the spread of tokens/s on a GPU machine comes from, and what measuring costs there.

Issue 3's first H200 protocol run gave a CV of J/token of 10-23 % across cycles, all of it from throughput (the
energy readings agreed within 1.5 %), and one telemetry A/B pair that lost 21 %. This bench separates the causes,
in one process, on one random-initialised model, with every condition repeated in rotation so drift hits all:

- the host's CPU alone: a fixed pure-Python loop timed again and again (no GPU);
- HF generate, eager (dynamic cache: one kernel launch after another from Python), with no telemetry, with
  `lem-telemetry` at its defaults (100 ms fast fields + energy counter thread), fast fields only, counter only;
- the same pinned to two CPU cores;
- HF generate with a static cache, which transformers compiles (torch.compile, CUDA graphs) so the decoding
  step is one graph replay and the host's CPU matters far less.

Then the harness ratio (issue 3: >= 0.98): tokens/s the tool measures for a config (engine host, measurement
protocol) against this process's bare generate calls, alternated tool, bare, tool, bare, ... in both modes.

    python bench/h200_variance.py --model random:llama-1b --batch-size 8 --reps 3 --out DIR
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
from collections.abc import Callable
from pathlib import Path

TELEMETRY = {  # condition -> environment of lem-telemetry (None: not running)
    "none": None,
    "telemetry_default": {},
    "telemetry_fast_only": {"LEM_TELEMETRY_ENERGY_INTERVAL_S": "3600"},
    "telemetry_counter_only": {"LEM_TELEMETRY_INTERVAL_S": "3600"},
    "telemetry_counter_1s": {"LEM_TELEMETRY_ENERGY_INTERVAL_S": "1"},
}


def cv_pct(values: list[float]) -> float:
    return 100 * statistics.pstdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def cpu_probe(n: int = 30) -> list[float]:
    """Milliseconds for a fixed amount of pure-Python work, n times."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i
        times.append(1000 * (time.perf_counter() - started))
    return times


def ci95(values: list[float]) -> float:
    """Half-width of a normal-approximation 95 % interval of the mean."""
    return 1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def paired_ab(pairs: int, window: Callable[[], float], log, result: dict) -> None:  # noqa: ANN001
    """Telemetry's cost by paired windows: one lem-telemetry, running for A and stopped (SIGSTOP: no NVML call at
    all) for B, the order alternating AB, BA, ... so drift cancels; the loss and its 95 % interval per pair."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "lem_telemetry.main"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
    )
    time.sleep(3)
    losses, rows = [], []
    try:
        for pair in range(pairs):
            rates = {}
            for running in (True, False) if pair % 2 == 0 else (False, True):
                daemon.send_signal(signal.SIGCONT if running else signal.SIGSTOP)
                time.sleep(0.2)
                rates["A" if running else "B"] = window()
            daemon.send_signal(signal.SIGCONT)
            losses.append(100 * (1 - rates["A"] / rates["B"]))
            rows.append({"pair": pair, "with_telemetry": rates["A"], "paused": rates["B"], "loss_pct": losses[-1]})
            print(
                f"pair {pair:2}  telemetry {rates['A']:8.1f}  paused {rates['B']:8.1f}  loss {losses[-1]:+6.2f} %",
                flush=True,
            )
    finally:
        daemon.send_signal(signal.SIGCONT)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    result["paired"] = rows
    result["paired_summary"] = {
        "telemetry_loss_pct": {
            "mean": statistics.fmean(losses),
            "ci95_half_width": ci95(losses),
            "median": statistics.median(losses),
            "pairs": len(losses),
        }
    }
    print(
        f"telemetry at 100 ms: {statistics.fmean(losses):+.2f} % +/- {ci95(losses):.2f} % tokens/s lost "
        f"({len(losses)} pairs)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-1b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--harness-pairs", type=int, default=3)
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="instead of the rotation: N pairs of short windows with lem-telemetry running (A) "
        "and paused by SIGSTOP (B), order alternating AB/BA, one daemon for all; static cache",
    )
    parser.add_argument(
        "--caches",
        nargs="+",
        choices=["dynamic", "static"],
        default=["dynamic", "static"],
        help="generate modes to measure (static: compiled decoding step)",
    )
    parser.add_argument("--conditions", nargs="+", choices=list(TELEMETRY), default=list(TELEMETRY)[:4])
    parser.add_argument("--database-url", default="sqlite:////tmp/lem_variance.db")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    os.environ["LEM_DATABASE_URL"] = args.database_url
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lem_shared.config.presets import random_preset
    from lem_shared.config.schema import ExperimentConfig
    from lem_shared.db.migrate import upgrade
    from lem_shared.measure.metrics import run_metrics
    from lem_shared.runtime.engine_host import EngineHost
    from lem_shared.runtime.measure import synthetic_prompts

    if args.database_url.startswith("sqlite:"):
        Path(args.database_url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    upgrade(args.database_url)
    result: dict = {
        "what": __doc__.splitlines()[0],
        "command": " ".join(sys.argv),
        "model": args.model,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "cpus": os.cpu_count(),
        "windows": [],
        "compile_s": None,
        "cpu_probe_ms": [],
    }

    def save() -> None:
        (args.out / "h200_variance.json").write_text(json.dumps(result, indent=1))

    preset = random_preset(args.model)
    assert preset is not None, "this bench builds random:NAME presets"
    config = LlamaConfig(**{k: bool(v) if k == "tie_word_embeddings" else v for k, v in preset.items()})
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = 0
    experiment = ExperimentConfig.model_validate(
        {
            "model": args.model,
            "dtype": "bfloat16",
            "batch_size": args.batch_size,
            "workload": {
                "num_prompts": args.batch_size * 2,
                "input_len": args.input_len,
                "output_len": args.output_len,
            },
            "measurement": {"min_window_s": args.window_s, "idle_gap_s": 0, "baseline_idle_s": 0},
        }
    )
    prompts = synthetic_prompts(experiment.workload, config.vocab_size)
    batches = [
        torch.tensor(prompts[i : i + args.batch_size], device=args.device)
        for i in range(0, len(prompts), args.batch_size)
    ]
    n = args.output_len

    @torch.inference_mode()
    def generate(ids: torch.Tensor, cache: str) -> int:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            cache_implementation=cache,
        )
        return int((out.shape[1] - ids.shape[1]) * out.shape[0])

    def sync() -> None:
        if torch.cuda.is_available() and args.device != "cpu":
            torch.cuda.synchronize()

    def bare_window(cache: str) -> tuple[float, list[float]]:
        """tokens/s over at least window_s of whole passes, and each call's latency."""
        tokens, latencies = 0, []
        sync()
        started = time.perf_counter()
        while time.perf_counter() - started < args.window_s:
            for ids in batches:
                call = time.perf_counter()
                tokens += generate(ids, cache)
                sync()
                latencies.append(time.perf_counter() - call)
        return tokens / (time.perf_counter() - started), latencies

    for _ in range(3):
        generate(batches[0], "dynamic")
    began = time.perf_counter()
    if "static" in args.caches:
        generate(batches[0], "static")  # compiles the decoding step for this batch shape
        result["compile_s"] = time.perf_counter() - began
        for _ in range(3):
            generate(batches[0], "static")
        print(f"compile of the static-cache decoding step: {result['compile_s']:.1f} s", flush=True)

    log = open(args.out / "variance_telemetry.log", "w")  # noqa: SIM115 - open for the daemons' lifetimes

    def with_telemetry(condition: str, body: Callable[[], None]) -> None:
        extra = TELEMETRY[condition]
        daemon = None
        if extra is not None:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "lem_telemetry.main"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | extra,
            )
            time.sleep(3)  # imports, NVML, the energy-read cost probe: sampling has begun
        try:
            body()
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)

    def record(rep: int, condition: str, mode: str, pinned: bool = False) -> None:
        tokens_per_s, latencies = bare_window(mode)
        result["windows"].append(
            {
                "rep": rep,
                "telemetry": condition,
                "cache": mode,
                "pinned": pinned,
                "tokens_per_s": tokens_per_s,
                "latencies_s": latencies,
            }
        )
        print(
            f"rep {rep}  {condition:24} {mode:8} pinned={pinned!s:5}  {tokens_per_s:8.1f} tok/s  "
            f"call CV {cv_pct(latencies):5.1f} %",
            flush=True,
        )
        save()

    if args.paired:
        paired_ab(args.paired, lambda: bare_window("static")[0], log, result)
        save()
        args.reps = 0
    all_cpus = os.sched_getaffinity(0)
    for rep in range(args.reps):
        result["cpu_probe_ms"].append(cpu_probe())
        print(
            f"rep {rep}  cpu probe: median {statistics.median(result['cpu_probe_ms'][-1]):.1f} ms, "
            f"CV {cv_pct(result['cpu_probe_ms'][-1]):.1f} %",
            flush=True,
        )
        for condition in args.conditions:

            def body(condition: str = condition, rep: int = rep) -> None:
                static_here = condition in ("none", "telemetry_default") or args.caches == ["static"]
                if "dynamic" in args.caches:
                    record(rep, condition, "dynamic")
                if "static" in args.caches and static_here:
                    record(rep, condition, "static")
                if condition == "none" and "dynamic" in args.caches:
                    os.sched_setaffinity(0, set(sorted(all_cpus)[-2:]))
                    try:
                        record(rep, condition, "dynamic", pinned=True)
                    finally:
                        os.sched_setaffinity(0, all_cpus)

            with_telemetry(condition, body)
    log.close()

    # Harness ratio: the tool's engine host against this process's bare calls, alternated, in both modes.
    engine = EngineHost("lem_worker_pytorch.adapter:TransformersAdapter", args.device, timeout_s=1800)
    result["harness"] = []
    try:
        for mode in [m for m in ("static", "dynamic") if m in args.caches]:
            config_json = {
                **experiment.model_dump(mode="json"),
                "pytorch": {"generation": {"cache_implementation": mode}},
            }
            engine.measure(config_json)  # load, settle (and compile) before the first pair
            for pair in range(args.harness_pairs):
                if pair % 2:  # alternate which goes first, so drift cancels
                    bare, _ = bare_window(mode)
                    tool = run_metrics(engine.measure(config_json))["tokens_per_s"]
                else:
                    tool = run_metrics(engine.measure(config_json))["tokens_per_s"]
                    bare, _ = bare_window(mode)
                result["harness"].append(
                    {
                        "cache": mode,
                        "pair": pair,
                        "tool_tokens_per_s": tool,
                        "bare_tokens_per_s": bare,
                        "ratio": tool / bare,
                    }
                )
                print(
                    f"harness {mode:8} pair {pair}: tool {tool:8.1f}  bare {bare:8.1f}  ratio {tool / bare:.4f}",
                    flush=True,
                )
                save()
    finally:
        engine.stop()

    summary = result.get("paired_summary", {})
    for mode in ("dynamic", "static"):
        for condition in TELEMETRY:
            rates = [
                w["tokens_per_s"]
                for w in result["windows"]
                if w["cache"] == mode and w["telemetry"] == condition and not w["pinned"]
            ]
            if rates:
                summary[f"{mode}/{condition}"] = {
                    "mean_tokens_per_s": statistics.fmean(rates),
                    "cv_between_windows_pct": cv_pct(rates),
                    "windows": len(rates),
                }
    pinned = [w["tokens_per_s"] for w in result["windows"] if w["pinned"]]
    if pinned:
        summary["dynamic/none/pinned"] = {
            "mean_tokens_per_s": statistics.fmean(pinned),
            "cv_between_windows_pct": cv_pct(pinned),
            "windows": len(pinned),
        }
    for mode in args.caches:
        if f"{mode}/none" not in summary:
            continue
        base = summary[f"{mode}/none"]["mean_tokens_per_s"]
        for condition in TELEMETRY:
            if f"{mode}/{condition}" in summary and condition != "none":
                summary[f"{mode}/{condition}"]["loss_vs_none_pct"] = 100 * (
                    1 - summary[f"{mode}/{condition}"]["mean_tokens_per_s"] / base
                )
    for mode in args.caches:
        ratios = [h["ratio"] for h in result["harness"] if h["cache"] == mode]
        summary[f"harness_ratio/{mode}"] = {
            "median": statistics.median(ratios),
            "mean": statistics.fmean(ratios),
            "ci95_half_width": ci95(ratios),
            "all": ratios,
        }
    result["summary"] = summary
    save()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
