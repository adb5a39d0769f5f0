"""The measurement harness's cost for vLLM: tokens/s of a bare ``vllm.LLM.generate`` script against the project's
adapter in its engine host (what a worker runs), as interleaved pairs on the same GPU.

    python bench/vllm_overhead.py --batch-sizes 1 8 64 --pairs 3 --out DIR

Both sides make the same calls: the same ``vllm.LLM`` keyword arguments and ``SamplingParams`` (the adapter's own
mapping functions), the same seeded token-id prompts cut into the same batches, warm-up batches first, then whole
passes over the batches until the window lasts --window-s. The bare side runs in a spawned process of its own, with
nothing of the runtime around ``generate``; the adapter side is ``EngineHost.measure`` (warm-up to convergence,
per-batch timings, per-request TTFTs, the KV-cache stat logger, the pipe back). Each pair runs both, in alternating
order (AB, BA, AB, ...), so a drift of the host's clocks falls on both. Both engines stay loaded, each with
--gpu-memory-utilization of the GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

ADAPTER = "lem_worker_vllm.adapter:VllmAdapter"


def experiment_for(args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    return {
        "backend": "vllm",
        "model": args.model,
        "dtype": "bfloat16",
        "batch_size": batch_size,
        "workload": {
            "num_prompts": batch_size * args.batches,
            "input_len": args.input_len,
            "output_len": args.output_len,
        },
        "measurement": {"min_window_s": args.window_s, "idle_gap_s": 0, "baseline_idle_s": 0},
        "vllm": {"engine": {"gpu_memory_utilization": args.gpu_memory_utilization}},
    }


def bare_main(conn: Any) -> None:
    """The bare script: vllm.LLM and generate with the adapter's arguments, timed with nothing else around it."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from lem_shared.config.schema import ExperimentConfig
    from lem_shared.runtime.engine_support import model_folder
    from lem_shared.runtime.measure import synthetic_prompts
    from lem_worker_vllm.adapter import engine_kwargs, output_tokens, sampling_kwargs

    llm = None
    while True:
        request = conn.recv()
        if request is None:
            return
        experiment = ExperimentConfig.model_validate(request)
        if llm is None:
            path, keep = model_folder(experiment, prefix="lem-bare-model-")
            llm = LLM(**engine_kwargs(experiment, path))
        params = SamplingParams(**sampling_kwargs(experiment))
        prompts = synthetic_prompts(experiment.workload, int(llm.llm_engine.model_config.get_vocab_size()))
        batches = [
            [TokensPrompt(prompt_token_ids=p) for p in prompts[i : i + experiment.batch_size]]
            for i in range(0, len(prompts), experiment.batch_size)
        ]
        for batch in batches * 2:  # warm-up, as the adapter side's minimum
            llm.generate(batch, params, use_tqdm=False)
        tokens, passes, started = 0, 0, time.perf_counter()
        while True:
            for batch in batches:
                tokens += output_tokens(llm.generate(batch, params, use_tqdm=False))
            passes += 1
            if time.perf_counter() - started >= experiment.measurement.min_window_s:
                break
        elapsed = time.perf_counter() - started
        conn.send({"tokens": tokens, "seconds": elapsed, "passes": passes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-1b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2, help="batches in one pass")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from lem_shared.runtime.engine_host import EngineHost

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    bare = ctx.Process(target=bare_main, args=(child,), name="bare-vllm", daemon=False)
    bare.start()
    engine = EngineHost(ADAPTER, args.device, timeout_s=900)
    rows = []
    try:
        for batch_size in args.batch_sizes:
            experiment = experiment_for(args, batch_size)
            for pair in range(args.pairs):
                figures = {}
                for side in ("bare", "adapter") if pair % 2 == 0 else ("adapter", "bare"):
                    if side == "bare":
                        parent.send(experiment)
                        answer = parent.recv()
                        figures["bare"] = answer["tokens"] / answer["seconds"]
                    else:
                        m = engine.measure(experiment)
                        tokens = sum(b.output_tokens for b in m.batches)
                        figures["adapter"] = tokens / (m.window_end - m.window_start)
                        figures["adapter_warmup_batches"] = m.warmup.iterations
                row = {
                    "batch_size": batch_size,
                    "pair": pair,
                    "order": "AB" if pair % 2 == 0 else "BA",
                    "bare_tokens_per_s": figures["bare"],
                    "adapter_tokens_per_s": figures["adapter"],
                    "ratio": figures["adapter"] / figures["bare"],
                }
                rows.append(row)
                print(
                    f"bs={batch_size:>3} pair {pair} {row['order']}: bare {row['bare_tokens_per_s']:.0f} tok/s, "
                    f"adapter {row['adapter_tokens_per_s']:.0f} tok/s, ratio {row['ratio']:.3f}",
                    flush=True,
                )
    finally:
        parent.send(None)
        bare.join(60)
        engine.stop()
    summary = []
    for batch_size in args.batch_sizes:
        ratios = [r["ratio"] for r in rows if r["batch_size"] == batch_size]
        summary.append(
            {
                "batch_size": batch_size,
                "pairs": len(ratios),
                "ratio_mean": statistics.fmean(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "ratio_stdev": statistics.stdev(ratios) if len(ratios) > 1 else None,
            }
        )
        print(
            f"bs={batch_size}: adapter/bare {summary[-1]['ratio_mean']:.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} pairs)"
        )
    (args.out / "vllm_overhead.json").write_text(
        json.dumps(
            {
                "what": __doc__.splitlines()[0],
                "args": vars(args) | {"out": str(args.out)},
                "summary": summary,
                "pairs": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
