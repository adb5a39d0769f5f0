"""Analytic against counted FLOPs of one ``generate`` (PREC-02): prefill and decode, per batch size, as JSON.

Builds the ``random:NAME`` preset's Llama (random weights, no download) and, for each batch size, runs
``generate`` once under ``torch.utils.flop_counter.FlopCounterMode`` (lem_worker_pytorch.profiler_flops; optionally also
``torch.profiler`` with ``--profiler``), and sets the counted prefill and decode FLOPs beside the analytic ones
(lem_shared.measure.flops), with their ratios, under both attention conventions (causal, full square). Nothing is timed:
counting slows every operator down, so this is never a measurement.

Needs torch and transformers only (no pydantic): ``PYTHONPATH=shared``.

    PYTHONPATH=shared python bench/flops_check.py --out flops_check.json                      # H200: llama-1b, 1 32
    PYTHONPATH=shared python bench/flops_check.py --preset random:llama-tiny --prompt-len 128 --new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

import torch  # noqa: E402
import transformers  # noqa: E402

from lem_shared.config.presets import random_preset  # noqa: E402
from lem_shared.measure.flops import decode_bytes, decode_flops, param_count, prefill_flops  # noqa: E402
from lem_worker_pytorch.profiler_flops import count_flops  # noqa: E402


def build_model(preset: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    config = transformers.LlamaConfig(**{k: bool(v) if k == "tie_word_embeddings" else v for k, v in preset.items()})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def ratio(counted: int, analytic: int) -> float | None:
    return counted / analytic if analytic else None


def check(
    model: Any,
    preset: dict[str, Any],
    batch: int,
    prompt_len: int,
    new_tokens: int,
    device: str,
    methods: list[str],
    dtype_bytes: int,
) -> dict[str, Any]:
    analytic = dict(
        prefill_flops=prefill_flops(preset, batch, prompt_len),
        prefill_flops_full_attention=prefill_flops(preset, batch, prompt_len, attention="full"),
        prefill_flops_all_logits=prefill_flops(preset, batch, prompt_len, logits="all"),
        decode_flops=decode_flops(preset, batch, prompt_len, new_tokens),
        decode_bytes=decode_bytes(preset, batch, prompt_len, new_tokens, dtype_bytes),
        two_params_tokens_prefill=2 * param_count(preset) * batch * prompt_len,
    )
    row: dict[str, Any] = dict(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, analytic=analytic)
    generator = torch.Generator(device="cpu").manual_seed(batch)
    input_ids = torch.randint(0, int(preset["vocab_size"]), (batch, prompt_len), generator=generator).to(device)
    for method in methods:
        started = time.perf_counter()
        counted = count_flops(model, input_ids, new_tokens, method=method)
        counted["count_seconds"] = round(time.perf_counter() - started, 2)
        counted["ratio_prefill"] = ratio(counted["prefill_flops"], analytic["prefill_flops"])
        counted["ratio_decode"] = ratio(counted["decode_flops"], analytic["decode_flops"])
        if "prefill_flops_full_attention" in counted:
            counted["ratio_prefill_full_attention"] = ratio(
                counted["prefill_flops_full_attention"], analytic["prefill_flops_full_attention"]
            )
        row[method] = counted
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="random:llama-1b")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU unless set")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--profiler", action="store_true", help="also count with torch.profiler(with_flops=True)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    preset = random_preset(args.preset)
    if preset is None:
        parser.error(f"{args.preset!r} is not a random:NAME preset")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model = build_model(preset, args.device, dtype)
    methods = ["flop_counter"] + (["profiler"] if args.profiler else [])
    rows = [
        check(model, preset, b, args.prompt_len, args.new_tokens, args.device, methods, torch.finfo(dtype).bits // 8)
        for b in args.batch_sizes
    ]
    result = dict(
        preset=args.preset,
        device=args.device,
        dtype=str(dtype).removeprefix("torch."),
        gpu=(
            torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
        ),
        torch=torch.__version__,
        transformers=transformers.__version__,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        rows=rows,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    for row in rows:
        for method in methods:
            c = row[method]
            print(
                f"b={row['batch']:<3} {method:<12} prefill counted/analytic {c['ratio_prefill']:.4f}  "
                f"decode {c['ratio_decode']:.4f}  forwards {c['forward_calls']}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
