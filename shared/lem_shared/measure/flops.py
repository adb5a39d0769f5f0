r"""Analytic FLOPs and memory traffic of decoder-only (Llama-style) inference, and efficiency against GPU peaks.

Shape, from the HF config: ``d`` hidden_size, ``f`` intermediate_size, ``L`` num_hidden_layers, ``H``
num_attention_heads, ``Hkv`` num_key_value_heads (default ``H``; ``Hkv < H`` is grouped-query attention),
``dh`` head_dim (default ``d / H``), ``V`` vocab_size. The MLP is gated (SwiGLU): gate, up and down, three
matrices. Workload: batch ``b`` sequences of ``P`` prompt tokens, ``N`` new tokens each.

A matmul of an (m x k) by a (k x n) matrix counts ``2*m*n*k`` FLOPs (one multiply and one add per term).

Per token and layer, the projections and the MLP (independent of context)::

    C_lin = 2*d*(H*dh)          Q projection
          + 2*2*d*(Hkv*dh)      K and V projections (GQA: Hkv*dh outputs each)
          + 2*(H*dh)*d          O projection
          + 3*2*d*f             gate, up, down

Per query token and layer, attending to ``k`` key positions::

    C_att(k) = 2*H*dh*k   (scores Q K^T)  +  2*H*dh*k   (weighted sum A V)  =  4*H*dh*k

The LM head is ``2*d*V`` per row of logits. Embedding lookups are gathers: 0 FLOPs.

Prefill is one forward over the prompt; it also yields the first generated token::

    F_prefill = b * ( L*P*C_lin  +  4*L*H*dh*A(P)  +  2*d*V*R )

``A(P)`` is the number of (query, key) pairs:

* ``attention="causal"`` (default): the exact causal sum, query ``i`` sees keys ``0..i``, ``A = P*(P+1)/2``. This is
  the useful work, and what flash-style kernels (FlashAttention, the memory-efficient kernel, the PyTorch SDPA
  flash kernels with ``is_causal=True``) do to within one tile along the diagonal: they skip the fully masked tiles.
* ``attention="full"``: the full square ``A = P*P``, what a kernel computes when the causal mask is handed to it as
  a dense tensor (the SDPA "math" path, or any kernel given ``attn_mask`` rather than ``is_causal``), and what
  ``torch.utils.flop_counter`` reports for SDPA (it ignores ``is_causal``).

``R`` is the number of positions the LM head projects. ``GenerationMixin.generate`` in transformers (checked in
5.24) sets ``model_kwargs["logits_to_keep"] = 1`` when the model's ``forward`` takes ``logits_to_keep``, which
``LlamaForCausalLM`` does (it slices the hidden states before ``lm_head``), so only the last position's logits are
computed: ``R = 1`` (default, ``logits="last"``). A plain forward with the default ``logits_to_keep=0`` projects all
positions: ``R = P`` (``logits="all"``).

Decode is the ``N - 1`` forwards after the prefill (``generate`` with ``max_new_tokens=N`` runs ``N`` forwards in all:
the prefill and ``N - 1`` single-token steps). Step ``j = 1 .. N-1`` feeds each sequence the token produced by the
previous forward, at position ``P + j - 1``; with the KV cache it attends to ``P + j`` positions (the cache plus
itself)::

    F_decode = b * sum_{j=1}^{N-1} ( L*C_lin + 4*L*H*dh*(P + j) + 2*d*V )
             = b * ( (N-1)*(L*C_lin + 2*d*V)  +  4*L*H*dh*((N-1)*P + N*(N-1)/2) )

(For a single query attending to the whole cache there is no causal triangle: both conventions agree.)

For short contexts ``F`` tends to ``2 * params_matmul * tokens``, with ``params_matmul = L*(C_lin/2) + d*V`` the
weights a token is multiplied by (not the embedding table unless tied; the norms have no matmul); the attention term
adds ``2*H*dh*k / (C_lin/2 + d*V/L)`` per token, which is what the usual ``2 * parameters * tokens`` leaves out.

Left out (elementwise, not matmuls): RMSNorm (~4*d per norm, 2 per layer), rotary embeddings (~6*(H+Hkv)*dh),
SiLU and the gate product (~5*f), residual adds (2*d), per token and layer: about 1e-3 of ``C_lin`` for these shapes
(Llama-3.2-1B: ~8e4 against 1.2e8). Softmax and scaling add ~5 FLOPs per (query, key) pair and head, ``5/(4*dh)`` of
the attention term (~2 % of it at ``dh = 64``). Sampling (argmax over ``V`` logits) is negligible.

Decode memory traffic (for achieved bandwidth), per step, ``s`` bytes per element::

    weights:   s * ( L*(C_lin/2 + 2*d) + d  +  d*V )      every weight once: layers, norms, LM head
               + s * b*d  if the embedding table is separate (only the b looked-up rows are read)
    KV read:   s * b * 2*L*Hkv*dh*(P + j)                 every cached key and value, per sequence
    KV write:  s * b * 2*L*Hkv*dh                         the new token's key and value

summed over ``j = 1 .. N-1``. Activations, logits (``b*V`` per step) and the kernels' re-reads are left out: they
are below 1 % of the weights for these shapes at batch <= 64, so the achieved bandwidth is a lower bound.

``efficiency`` and ``bandwidth_efficiency`` put achieved rates against ``GPU_PEAKS``: dense (not 2:4 sparsity)
BF16/FP16 tensor-core TFLOP/s with FP32 accumulation and memory bandwidth, from the vendor datasheets, keyed by the
name NVML reports. MFU here is model FLOPs utilisation: analytic (useful) FLOPs per second over the dense peak.

This module imports nothing outside the standard library, so benches on a bare GPU machine can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ATTENTION_CONVENTIONS = ("causal", "full")
LOGITS_CONVENTIONS = ("last", "all")

# Dense BF16/FP16 tensor-core peak (TFLOP/s, FP32 accumulate, no sparsity) and memory bandwidth (TB/s), by the
# name NVML reports (nvmlDeviceGetName / nvidia-smi --query-gpu=name).
GPU_PEAKS: dict[str, dict[str, float | str]] = {
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 1,979 TFLOPS with sparsity (989 dense), 4.8 TB/s.
    "NVIDIA H200": dict(bf16_tflops=989.0, mem_tb_s=4.8, source="NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
    # Same datasheet, H200 NVL: BF16 1,671 TFLOPS with sparsity (835 dense), 4.8 TB/s.
    "NVIDIA H200 NVL": dict(bf16_tflops=835.0, mem_tb_s=4.8, source="NVIDIA H200 Tensor Core GPU datasheet (NVL)"),
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 1,979 TFLOPS with sparsity (989 dense), 3.35 TB/s.
    "NVIDIA H100 80GB HBM3": dict(
        bf16_tflops=989.0, mem_tb_s=3.35, source="NVIDIA H100 Tensor Core GPU datasheet (SXM)"
    ),
    # Same datasheet, H100 PCIe: BF16 1,513 TFLOPS with sparsity (756 dense), 2 TB/s.
    "NVIDIA H100 PCIe": dict(bf16_tflops=756.0, mem_tb_s=2.0, source="NVIDIA H100 Tensor Core GPU datasheet (PCIe)"),
    # Same datasheet, H100 NVL: BF16 1,671 TFLOPS with sparsity (835 dense), 3.9 TB/s.
    "NVIDIA H100 NVL": dict(bf16_tflops=835.0, mem_tb_s=3.9, source="NVIDIA H100 Tensor Core GPU datasheet (NVL)"),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 with sparsity) for every form factor;
    # bandwidth 2,039 GB/s (80GB SXM), 1,555 GB/s (40GB), 1,935 GB/s (80GB PCIe).
    "NVIDIA A100-SXM4-80GB": dict(bf16_tflops=312.0, mem_tb_s=2.039, source="NVIDIA A100 Tensor Core GPU datasheet"),
    "NVIDIA A100-SXM4-40GB": dict(bf16_tflops=312.0, mem_tb_s=1.555, source="NVIDIA A100 Tensor Core GPU datasheet"),
    "NVIDIA A100 80GB PCIe": dict(bf16_tflops=312.0, mem_tb_s=1.935, source="NVIDIA A100 Tensor Core GPU datasheet"),
    "NVIDIA A100-PCIE-40GB": dict(bf16_tflops=312.0, mem_tb_s=1.555, source="NVIDIA A100 Tensor Core GPU datasheet"),
    # NVIDIA L40S GPU datasheet: BF16 Tensor Core 362.05 TFLOPS dense (733 with sparsity), 864 GB/s.
    "NVIDIA L40S": dict(bf16_tflops=362.05, mem_tb_s=0.864, source="NVIDIA L40S datasheet"),
    # NVIDIA L4 Tensor Core GPU datasheet: BF16 Tensor Core 242 TFLOPS with sparsity (121 dense), 300 GB/s.
    "NVIDIA L4": dict(bf16_tflops=121.0, mem_tb_s=0.300, source="NVIDIA L4 Tensor Core GPU datasheet"),
    # NVIDIA Ada GPU Architecture whitepaper (appendix A, GeForce RTX 4090): peak BF16 tensor TFLOPS with FP32
    # accumulate 165.2 dense (330.4 with sparsity; the 330 dense figure is FP16 accumulate), 1,008 GB/s.
    "NVIDIA GeForce RTX 4090": dict(bf16_tflops=165.2, mem_tb_s=1.008, source="NVIDIA Ada GPU Architecture whitepaper"),
}

# Precisions the BF16/FP16 peak applies to; anything else gets no MFU (it would flatter FP32 and wrong FP8).
PEAK_DTYPES = ("bfloat16", "float16", "bf16", "fp16", "half", "torch.bfloat16", "torch.float16")


def _get(config: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    return default if value is None else value


def shape(config: Mapping[str, Any] | Any) -> dict[str, int | bool]:
    """The dimensions the formulas use, from an HF config (a dict such as a preset, or a ``PretrainedConfig``)."""
    d = int(_get(config, "hidden_size"))
    heads = int(_get(config, "num_attention_heads"))
    return dict(
        d=d,
        f=int(_get(config, "intermediate_size")),
        layers=int(_get(config, "num_hidden_layers")),
        heads=heads,
        kv_heads=int(_get(config, "num_key_value_heads", heads)),
        head_dim=int(_get(config, "head_dim", d // heads)),
        vocab=int(_get(config, "vocab_size")),
        tied=bool(_get(config, "tie_word_embeddings", False)),
    )


def linear_flops_per_token_layer(config: Mapping[str, Any] | Any) -> int:
    """``C_lin``: Q/K/V/O projections and the three MLP matrices, per token and layer."""
    s = shape(config)
    q_out, kv_out = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    return 2 * s["d"] * q_out + 2 * 2 * s["d"] * kv_out + 2 * q_out * s["d"] + 3 * 2 * s["d"] * s["f"]


def matmul_params(config: Mapping[str, Any] | Any) -> int:
    """Weights a token is multiplied by: every layer's projections and MLP, and the LM head (no embeddings, norms)."""
    s = shape(config)
    return s["layers"] * linear_flops_per_token_layer(config) // 2 + s["d"] * s["vocab"]


def param_count(config: Mapping[str, Any] | Any) -> int:
    """All parameters: the matmul weights, the norms (2 per layer and a final one) and an untied embedding table."""
    s = shape(config)
    norms = (2 * s["layers"] + 1) * s["d"]
    return matmul_params(config) + norms + (0 if s["tied"] else s["vocab"] * s["d"])


def _pairs(prompt_len: int, attention: str) -> int:
    if attention == "causal":
        return prompt_len * (prompt_len + 1) // 2
    if attention == "full":
        return prompt_len * prompt_len
    raise ValueError(f"attention must be one of {ATTENTION_CONVENTIONS}, not {attention!r}")


def prefill_flops(
    config: Mapping[str, Any] | Any, batch: int, prompt_len: int, *, attention: str = "causal", logits: str = "last"
) -> int:
    """FLOPs of the prefill forward: ``b * (L*P*C_lin + 4*L*H*dh*A(P) + 2*d*V*R)``.

    ``attention="causal"``: ``A = P*(P+1)/2`` (exact causal sum; flash-style kernels with ``is_causal``).
    ``attention="full"``: ``A = P*P`` (dense mask; torch's flop counter for SDPA).
    ``logits="last"``: ``R = 1`` (``generate`` passes ``logits_to_keep=1``); ``logits="all"``: ``R = P``.
    """
    if logits not in LOGITS_CONVENTIONS:
        raise ValueError(f"logits must be one of {LOGITS_CONVENTIONS}, not {logits!r}")
    s = shape(config)
    rows = 1 if logits == "last" else prompt_len
    per_seq = (
        s["layers"] * prompt_len * linear_flops_per_token_layer(config)
        + 4 * s["layers"] * s["heads"] * s["head_dim"] * _pairs(prompt_len, attention)
        + 2 * s["d"] * s["vocab"] * rows
    )
    return batch * per_seq


def decode_flops(config: Mapping[str, Any] | Any, batch: int, prompt_len: int, new_tokens: int) -> int:
    """FLOPs of the ``new_tokens - 1`` single-token forwards after the prefill (which yields the first token).

    ``b * ((N-1)*(L*C_lin + 2*d*V) + 4*L*H*dh*((N-1)*P + N*(N-1)/2))``: step ``j`` attends to ``P + j`` positions.
    """
    s = shape(config)
    steps = max(new_tokens - 1, 0)
    keys = steps * prompt_len + new_tokens * steps // 2  # sum_{j=1}^{N-1} (P + j)
    per_seq = (
        steps * (s["layers"] * linear_flops_per_token_layer(config) + 2 * s["d"] * s["vocab"])
        + 4 * s["layers"] * s["heads"] * s["head_dim"] * keys
    )
    return batch * per_seq


def generate_flops(
    config: Mapping[str, Any] | Any, batch: int, prompt_len: int, new_tokens: int, *, attention: str = "causal"
) -> dict[str, int]:
    """Prefill, decode and total FLOPs of ``generate(max_new_tokens=new_tokens)``."""
    pre = prefill_flops(config, batch, prompt_len, attention=attention)
    dec = decode_flops(config, batch, prompt_len, new_tokens)
    return dict(prefill_flops=pre, decode_flops=dec, total_flops=pre + dec)


def decode_bytes(
    config: Mapping[str, Any] | Any, batch: int, prompt_len: int, new_tokens: int, dtype_bytes: int | float = 2
) -> int:
    """Bytes moved to and from memory by the decode steps: weights once a step, the KV cache read and the new KV."""
    s = shape(config)
    steps = max(new_tokens - 1, 0)
    weights = s["layers"] * (linear_flops_per_token_layer(config) // 2 + 2 * s["d"]) + s["d"] + s["d"] * s["vocab"]
    if not s["tied"]:
        weights += batch * s["d"]
    kv_per_position = 2 * s["layers"] * s["kv_heads"] * s["head_dim"]
    keys = steps * prompt_len + new_tokens * steps // 2
    elements = steps * weights + batch * kv_per_position * keys + batch * kv_per_position * steps
    return int(round(elements * dtype_bytes))


def gpu_peak(gpu_name: str | None) -> dict[str, float | str] | None:
    """The peak entry for an NVML GPU name (whitespace and case tolerant), or None."""
    if not gpu_name:
        return None
    key = " ".join(gpu_name.split()).lower()
    for name, peak in GPU_PEAKS.items():
        if name.lower() == key:
            return peak
    return None


def efficiency(
    flops: float, seconds: float, energy_j: float | None, gpu_name: str | None, *, dtype: str | None = None
) -> dict[str, float | str | None]:
    """Achieved TFLOP/s, MFU against the dense BF16/FP16 peak, and J per TFLOP.

    ``mfu`` is None with ``mfu_reason`` when the GPU is not in ``GPU_PEAKS`` or ``dtype`` (when given) is not
    BF16/FP16; ``j_per_tflop`` is None without an energy.
    """
    achieved = flops / seconds / 1e12 if seconds > 0 else None
    out: dict[str, float | str | None] = dict(
        tflops=flops / 1e12,
        achieved_tflops=achieved,
        peak_tflops=None,
        mfu=None,
        mfu_reason=None,
        j_per_tflop=energy_j / (flops / 1e12) if energy_j is not None and flops > 0 else None,
    )
    peak = gpu_peak(gpu_name)
    if achieved is None:
        out["mfu_reason"] = "no duration"
    elif peak is None:
        out["mfu_reason"] = f"no peak for GPU {gpu_name!r} in GPU_PEAKS"
    elif dtype is not None and str(dtype).lower() not in PEAK_DTYPES:
        out["mfu_reason"] = f"peaks are BF16/FP16 tensor-core figures; dtype {dtype} has none"
    else:
        out["peak_tflops"] = float(peak["bf16_tflops"])
        out["mfu"] = achieved / float(peak["bf16_tflops"])
    return out


def bandwidth_efficiency(nbytes: float, seconds: float, gpu_name: str | None) -> dict[str, float | str | None]:
    """Achieved memory bandwidth (TB/s) and its share of the GPU's peak (None with a reason when unknown)."""
    achieved = nbytes / seconds / 1e12 if seconds > 0 else None
    out: dict[str, float | str | None] = dict(
        achieved_tb_s=achieved, peak_tb_s=None, bandwidth_utilisation=None, bandwidth_reason=None
    )
    peak = gpu_peak(gpu_name)
    if achieved is None:
        out["bandwidth_reason"] = "no duration"
    elif peak is None:
        out["bandwidth_reason"] = f"no peak for GPU {gpu_name!r} in GPU_PEAKS"
    else:
        out["peak_tb_s"] = float(peak["mem_tb_s"])
        out["bandwidth_utilisation"] = achieved / float(peak["mem_tb_s"])
    return out
