"""Counted FLOPs of one generate on the tiny random Llama (CPU) against the analytic formulas (PREC-02)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lem_shared.config.presets import random_preset  # noqa: E402
from lem_shared.measure.flops import decode_flops, param_count, prefill_flops  # noqa: E402
from lem_worker_pytorch.profiler_flops import attention_pairs, count_flops  # noqa: E402

PRESET = random_preset("random:llama-tiny")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{k: bool(v) if k == "tie_word_embeddings" else v for k, v in PRESET.items()})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_parameter_count_matches_the_built_model(tiny_model):
    assert param_count(PRESET) == sum(p.numel() for p in tiny_model.parameters())


@pytest.mark.parametrize(("batch", "prompt_len", "new_tokens"), [(2, 16, 4), (1, 96, 6)])
def test_counted_flops_match_the_analytic_ones(tiny_model, batch, prompt_len, new_tokens):
    input_ids = torch.randint(0, PRESET["vocab_size"], (batch, prompt_len))
    counted = count_flops(tiny_model, input_ids, new_tokens)
    assert counted["method"] == "flop_counter"
    assert counted["forward_calls"] == new_tokens and counted["generated_tokens"] == new_tokens
    analytic_prefill = prefill_flops(PRESET, batch, prompt_len)
    analytic_decode = decode_flops(PRESET, batch, prompt_len, new_tokens)
    assert counted["prefill_flops"] / analytic_prefill == pytest.approx(1.0, abs=0.10)
    assert counted["decode_flops"] / analytic_decode == pytest.approx(1.0, abs=0.10)
    # In fact exact: the counter sees the same matmuls, the LM head on the last position only (logits_to_keep=1),
    # and the CPU flash kernel called with is_causal=True in the prefill.
    assert counted["prefill_flops"] == analytic_prefill
    assert counted["decode_flops"] == analytic_decode
    # torch's own convention (SDPA as the full square) matches the analytic full-square prefill.
    assert counted["prefill_flops_full_attention"] == prefill_flops(PRESET, batch, prompt_len, attention="full")
    assert counted["decode_flops_full_attention"] == analytic_decode


def test_profiler_method_misses_the_fused_attention(tiny_model):
    input_ids = torch.randint(0, PRESET["vocab_size"], (1, 64))
    counted = count_flops(tiny_model, input_ids, 3, method="profiler")
    assert counted["forward_calls"] == 3
    assert not any("attention" in op for op in counted["prefill_by_op"])
    matmuls = counted["prefill_by_op"]["aten::mm"]
    # Its matmuls are the analytic prefill less the attention term (4 layers * 4 heads * 4 * 64 * 64*65/2).
    assert matmuls == prefill_flops(PRESET, 1, 64) - 4 * 4 * 4 * 64 * (64 * 65 // 2)


def test_attention_pairs_under_torchs_causal_mask():
    assert attention_pairs(16, 16, True) == 136
    assert attention_pairs(16, 16, False) == 256
    assert attention_pairs(1, 40, True) == 1  # top-left aligned: why HF never passes is_causal for one query
    assert attention_pairs(4, 2, True) == 3 + 2 * 2
