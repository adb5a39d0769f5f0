"""Analytic FLOPs and bytes against hand-computed cases for two shapes, and the efficiency figures (PREC-02).

The expected numbers are worked out in the comments, term by term, from the formulas in lem_shared.measure.flops'
docstring; none of them comes from the module's own helpers.
"""

from __future__ import annotations

import pytest

from lem_shared.config.presets import LLAMA_PRESETS
from lem_shared.measure.flops import (
    GPU_PEAKS,
    bandwidth_efficiency,
    decode_bytes,
    decode_flops,
    efficiency,
    matmul_params,
    param_count,
    prefill_flops,
)

TINY = LLAMA_PRESETS["llama-tiny"]  # d=256 f=688 L=4 H=4 Hkv=4 dh=64 V=32000, untied
ONE_B = LLAMA_PRESETS["llama-1b"]  # d=2048 f=8192 L=16 H=32 Hkv=8 dh=64 V=128256, tied


# ---- llama-tiny, batch 2, prompt 16, 4 new tokens ----
# Per token and layer: Q 2*256*256 = 131,072; K and V 2*2*256*256 = 262,144; O 131,072;
# MLP 3*2*256*688 = 1,056,768; C_lin = 1,581,056.
# Attention per (query, key) pair and layer: 4*H*dh = 4*4*64 = 1,024; over 4 layers 4,096.
# LM head per row: 2*256*32000 = 16,384,000.


def test_tiny_prefill_hand_computed():
    # Linear: 4 layers * 16 tokens * 1,581,056 = 101,187,584.
    # Causal pairs 16*17/2 = 136 -> 4,096*136 = 557,056. Full square 256 pairs -> 1,048,576.
    # One logits row 16,384,000; sixteen rows 262,144,000.
    causal = 2 * (101_187_584 + 557_056 + 16_384_000)
    assert causal == 236_257_280
    assert prefill_flops(TINY, 2, 16) == 236_257_280
    assert prefill_flops(TINY, 2, 16, attention="full") == 2 * (101_187_584 + 1_048_576 + 16_384_000) == 237_240_320
    assert prefill_flops(TINY, 2, 16, logits="all") == 2 * (101_187_584 + 557_056 + 262_144_000) == 727_777_280


def test_tiny_decode_hand_computed():
    # 3 steps after the prefill, attending to 17, 18, 19 positions: 54 pairs per layer.
    # Per step: 4 layers * 1,581,056 = 6,324,224 plus the LM head 16,384,000 = 22,708,224; 3 steps 68,124,672.
    # Attention: 4,096 * 54 = 221,184. Per sequence 68,345,856; batch 2: 136,691,712.
    assert decode_flops(TINY, 2, 16, 4) == 2 * (68_124_672 + 221_184) == 136_691_712
    assert decode_flops(TINY, 2, 16, 1) == 0  # the only token comes out of the prefill


def test_tiny_decode_bytes_hand_computed():
    # Weights a step: 4 layers * (790,528 matmul + 512 norm) + 256 final norm + 8,192,000 LM head = 11,356,416,
    # plus the 2 looked-up embedding rows (untied) 512 = 11,356,928 elements; 3 steps 34,070,784.
    # KV per position: 2*4 layers*4 heads*64 = 2,048 elements; read 2 seq * 54 positions
    # -> 221,184; write 2*3 -> 12,288.
    elements = 34_070_784 + 221_184 + 12_288
    assert decode_bytes(TINY, 2, 16, 4, dtype_bytes=2) == 2 * elements == 68_608_512


# ---- Llama-3.2-1B shape, batch 1, prompt 2048, 128 new tokens ----
# Per token and layer: Q 2*2048*2048 = 8,388,608; K and V 2*2*2048*(8*64) = 4,194,304; O 8,388,608;
# MLP 3*2*2048*8192 = 100,663,296; C_lin = 121,634,816.
# Attention per pair over all layers: 4*16 layers*32 heads*64 = 131,072. LM head per row: 2*2048*128256 = 525,336,576.


def test_1b_prefill_hand_computed():
    # Linear: 16 * 2048 * 121,634,816 = 3,985,729,650,688.
    # Causal pairs 2048*2049/2 = 2,098,176 -> 131,072 * 2,098,176 = 275,012,124,672 (6.5 % of the total).
    expected = 3_985_729_650_688 + 275_012_124_672 + 525_336_576
    assert expected == 4_261_267_111_936
    assert prefill_flops(ONE_B, 1, 2048) == 4_261_267_111_936
    assert prefill_flops(ONE_B, 32, 2048) == 32 * 4_261_267_111_936
    # Full square: 2048^2 = 4,194,304 pairs -> 549,755,813,888.
    assert prefill_flops(ONE_B, 1, 2048, attention="full") == 3_985_729_650_688 + 549_755_813_888 + 525_336_576


def test_1b_decode_hand_computed():
    # 127 steps; per step 16 * 121,634,816 + 525,336,576 = 2,471,493,632 -> 313,879,691,264.
    # Pairs: 127*2048 + (1 + ... + 127) = 260,096 + 8,128 = 268,224 -> 131,072 * 268,224 = 35,156,656,128.
    assert decode_flops(ONE_B, 1, 2048, 128) == 313_879_691_264 + 35_156_656_128 == 349_036_347_392


def test_1b_decode_bytes_and_parameters_hand_computed():
    # Weights: 16 * (60,817,408 matmul + 4,096 norm) + 2,048 final norm + 262,668,288 LM head (= the tied embedding)
    # = 1,235,814,400 elements: the published parameter count of Llama 3.2 1B.
    assert param_count(ONE_B) == 1_235_814_400
    # KV per position: 2 * 16 layers * 8 kv heads * 64 = 16,384 elements; read 268,224 positions, write 127.
    elements = 127 * 1_235_814_400 + 16_384 * 268_224 + 16_384 * 127
    assert decode_bytes(ONE_B, 1, 2048, 128, dtype_bytes=2) == 2 * elements == 322_690_183_168


def test_gqa_changes_only_the_kv_projections_and_cache():
    mha = dict(ONE_B, num_key_value_heads=32)
    # K and V projections grow from 2*2*2048*512 to 2*2*2048*2048 per token and layer: +12,582,912.
    assert prefill_flops(mha, 1, 2048) - prefill_flops(ONE_B, 1, 2048) == 16 * 2048 * 12_582_912
    assert decode_flops(mha, 1, 2048, 128) - decode_flops(ONE_B, 1, 2048, 128) == 127 * 16 * 12_582_912
    # The attention term counts query heads; the KV cache read is 4x larger under MHA.
    kv_gqa, kv_mha = 16_384 * (268_224 + 127), 65_536 * (268_224 + 127)
    weight_delta = 127 * 16 * 12_582_912 // 2
    assert decode_bytes(mha, 1, 2048, 128, 2) - decode_bytes(ONE_B, 1, 2048, 128, 2) == 2 * (
        weight_delta + kv_mha - kv_gqa
    )


def test_decode_flops_grow_with_the_cache():
    # Each of the 127 steps attends to 2048 more positions: 131,072 * 2048 * 127 more FLOPs per sequence.
    assert decode_flops(ONE_B, 1, 4096, 128) - decode_flops(ONE_B, 1, 2048, 128) == 131_072 * 2048 * 127
    steps = [decode_flops(ONE_B, 1, 1024, n + 1) - decode_flops(ONE_B, 1, 1024, n) for n in range(1, 64)]
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))  # each step costs more than the one before


def test_two_params_tokens_is_the_short_context_limit():
    # 2 * (matmul weights) * tokens, without attention: exact up to the attention term.
    assert matmul_params(ONE_B) == 16 * 60_817_408 + 262_668_288
    per_token = 2 * (16 * 60_817_408 + 262_668_288)
    # Prompt 8, 8 new tokens: attention adds 131,072 * (pairs) against ~2.47e9 a token: within 0.1 %.
    short = decode_flops(ONE_B, 4, 8, 8) / (4 * 7 * per_token)
    assert 1.0 < short < 1.001
    # Prompt 32k: attention is more than half of the decode work, the usual estimate is off by more than 2x.
    long = decode_flops(ONE_B, 1, 32_768, 128) / (127 * per_token)
    assert long > 2.0
    # Prefill, all logits rows: 2 * params * P within 1 % at P = 64 (1 + 65/2*131,072/2.47e9 ~ 1.0017).
    assert prefill_flops(ONE_B, 1, 64, logits="all") / (64 * per_token) == pytest.approx(1.0, rel=0.01)


def test_efficiency_against_the_h200_peak():
    # 4.26e12 FLOPs in 10 ms: 426.1 TFLOP/s, 43.1 % of 989 dense; 3.0 J -> 0.704 J per TFLOP.
    out = efficiency(4_261_267_111_936, 0.010, 3.0, "NVIDIA H200")
    assert out["achieved_tflops"] == pytest.approx(426.1267, rel=1e-6)
    assert out["peak_tflops"] == 989.0
    assert out["mfu"] == pytest.approx(426.1267 / 989.0, rel=1e-6)
    assert out["j_per_tflop"] == pytest.approx(3.0 / 4.261267, rel=1e-6)
    assert out["mfu_reason"] is None
    # Whitespace and case as some drivers print it.
    assert efficiency(1e12, 1.0, None, "  nvidia  h200 ")["mfu"] == pytest.approx(1 / 989)


def test_unknown_gpu_or_precision_gives_no_mfu_with_a_reason():
    out = efficiency(1e12, 1.0, 5.0, "NVIDIA Tesla T4")
    assert out["mfu"] is None and "NVIDIA Tesla T4" in out["mfu_reason"]
    assert out["achieved_tflops"] == 1.0 and out["j_per_tflop"] == 5.0
    assert efficiency(1e12, 1.0, None, None)["mfu"] is None
    fp32 = efficiency(1e12, 1.0, None, "NVIDIA H200", dtype="float32")
    assert fp32["mfu"] is None and "float32" in fp32["mfu_reason"]
    assert efficiency(1e12, 1.0, None, "NVIDIA H200", dtype="bfloat16")["mfu"] == pytest.approx(1 / 989)
    bw = bandwidth_efficiency(1e12, 1.0, "cpu")
    assert bw["bandwidth_utilisation"] is None and "cpu" in bw["bandwidth_reason"]


def test_bandwidth_efficiency_for_decode():
    # 322.69 GB of decode traffic in 0.1 s: 3.2269 TB/s, 67.2 % of the H200's 4.8 TB/s.
    out = bandwidth_efficiency(322_690_183_168, 0.1, "NVIDIA H200")
    assert out["achieved_tb_s"] == pytest.approx(3.2269018, rel=1e-6)
    assert out["bandwidth_utilisation"] == pytest.approx(3.2269018 / 4.8, rel=1e-6)


def test_peak_table_is_dense_and_complete():
    for name in (
        "NVIDIA H200",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA L40S",
        "NVIDIA L4",
        "NVIDIA GeForce RTX 4090",
    ):
        peak = GPU_PEAKS[name]
        assert 100 < peak["bf16_tflops"] < 1000 and 0.2 < peak["mem_tb_s"] < 5 and peak["source"]
