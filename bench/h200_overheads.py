"""What measuring costs, on a real GPU: telemetry's overhead on the workload, and the harness's overhead.

1. Telemetry A/B: the same config measured by the engine host with `lem-telemetry` sampling at 100 ms (A) and
   with it stopped (B), alternated A B A B A B so drift hits both; reports tokens/s lost (target <= 0.5 %).
2. Harness ratio: tokens/s the tool measures for a config, against a bare script in this process making the
   same `generate` calls on the same model shape and prompts (target >= 0.98).

    python bench/h200_overheads.py --model random:llama-1b --batch-size 8 --out DIR
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
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--database-url", default="sqlite:////tmp/lem_overheads.db")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    os.environ["LEM_DATABASE_URL"] = args.database_url

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lem_shared.config import ExperimentConfig
    from lem_shared.db.migrate import upgrade
    from lem_shared.metrics import run_metrics
    from lem_shared.model_presets import random_preset
    from lem_shared.runtime.engine_host import EngineHost
    from lem_shared.runtime.measure import synthetic_prompts

    if args.database_url.startswith("sqlite:"):
        Path(args.database_url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    upgrade(args.database_url)
    args.out.mkdir(parents=True, exist_ok=True)
    experiment = ExperimentConfig.model_validate({
        "model": args.model, "dtype": "bfloat16", "batch_size": args.batch_size,
        "workload": {"num_prompts": args.batch_size * 2, "input_len": 128, "output_len": 128},
        "measurement": {"min_window_s": args.window_s, "idle_gap_s": 0, "baseline_idle_s": 0},
    })
    engine = EngineHost("lem_worker_pytorch.adapter:TransformersAdapter", args.device, timeout_s=1800)

    def tool_tokens_per_s() -> float:
        return run_metrics(engine.measure(experiment.model_dump(mode="json")))["tokens_per_s"]

    with_telemetry, without = [], []
    log = open(args.out / "overheads_telemetry.log", "w")  # noqa: SIM115 - open for the daemons' lifetimes
    try:
        tool_tokens_per_s()  # load and settle the model before the first pair
        for _ in range(args.pairs):
            daemon = subprocess.Popen([sys.executable, "-m", "lem_telemetry.main"], stdout=log,
                                      stderr=subprocess.STDOUT, env=os.environ.copy())
            time.sleep(2)
            with_telemetry.append(tool_tokens_per_s())
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            without.append(tool_tokens_per_s())
            print(f"A (telemetry 100 ms) {with_telemetry[-1]:.1f} tok/s   B (none) {without[-1]:.1f} tok/s", flush=True)
        tool = [tool_tokens_per_s() for _ in range(2)]
    finally:
        engine.stop()
        log.close()

    # The bare script: the same model shape, prompts and generate call, timed over the same minimum window.
    preset = random_preset(args.model)
    assert preset is not None, "the bare comparison builds random:NAME presets"
    config = LlamaConfig(**{k: bool(v) if k == "tie_word_embeddings" else v for k, v in preset.items()})
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    prompts = synthetic_prompts(experiment.workload, config.vocab_size)
    batches = [torch.tensor(prompts[i:i + args.batch_size], device=args.device)
               for i in range(0, len(prompts), args.batch_size)]
    n = experiment.workload.output_len

    def bare_tokens_per_s() -> float:
        tokens, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.window_s:
            for ids in batches:
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, pad_token_id=0)
                tokens += (out.shape[1] - ids.shape[1]) * out.shape[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return tokens / (time.perf_counter() - started)

    with torch.inference_mode():
        for _ in range(5):  # warm-up
            model.generate(input_ids=batches[0], attention_mask=torch.ones_like(batches[0]), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
        bare = [bare_tokens_per_s() for _ in range(2)]

    loss_pct = 100 * (1 - statistics.fmean(with_telemetry) / statistics.fmean(without))
    ratio = statistics.fmean(tool) / statistics.fmean(bare)
    result = {"what": __doc__.splitlines()[0], "command": " ".join(sys.argv), "model": args.model,
              "batch_size": args.batch_size, "tokens_per_s_with_telemetry": with_telemetry,
              "tokens_per_s_without_telemetry": without, "telemetry_loss_pct": loss_pct,
              "tool_tokens_per_s": tool, "bare_tokens_per_s": bare, "harness_ratio": ratio}
    (args.out / "h200_overheads.json").write_text(json.dumps(result, indent=2))
    print(f"telemetry at 100 ms costs {loss_pct:+.2f} % tokens/s (A {statistics.fmean(with_telemetry):.1f}, "
          f"B {statistics.fmean(without):.1f}); harness/bare tokens/s ratio {ratio:.4f} "
          f"(tool {statistics.fmean(tool):.1f}, bare {statistics.fmean(bare):.1f})")


if __name__ == "__main__":
    main()
