"""The serving campaign the serving tests share: ShareGPT prompts at two request rates into transformers'
continuous batching on the CPU (run once per test session, by the ``serving_campaign`` fixture)."""

from __future__ import annotations

RATES = [10.0, 40.0]
SERVING = {
    "name": "serving-sharegpt",
    "cycles": 1,
    "experiment": {
        "model": "random:llama-tiny",
        "workload": {
            "kind": "dataset",
            "source": "sharegpt",
            "num_prompts": 8,
            "input_len": 96,
            "output_len": 12,
            "output_lengths": "forced",
            "mode": "serving",
            "max_concurrency": 4,
            "slo": {"ttft_ms": 60000, "tpot_ms": 60000},
        },
        "measurement": {"warmup_min": 1, "warmup_max": 3, "warmup_window": 2},
    },
    "grid": {"workload.request_rate": RATES},
}
