"""The vllm section of an experiment: ``vllm.LLM`` engine arguments and ``vllm.SamplingParams``.

Every energy- or throughput-relevant parameter of the committed vLLM snapshot is a first-class field here, named
exactly as vLLM names it (``relevance/vllm.yaml`` says which are relevant and why). Types and ranges follow the
snapshot's types and docs, so a value vLLM would refuse is refused at plan time; ``VllmOptions.check`` adds the
rules that tie several fields (or a field and the rest of the experiment) together. Names whose value set moves
from release to release (kernel backends, quantization methods) are checked for shape only and left to vLLM.

``engine`` arguments shape the loaded engine (a change means a new engine, see ``ExperimentConfig.engine_key``);
``sampling`` arguments go with every request and never force a reload.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from lem_shared.config.presets import random_preset
from lem_shared.params.engine import EngineGroup, EngineSection


def _field(description: str, example: Any, **constraints: Any) -> Any:
    """A first-class parameter: None (vLLM's default) unless set; ``example`` is a valid non-default value."""
    return Field(None, description=description, examples=[example], **constraints)


# A backend or method name whose accepted values change between vLLM releases: checked for shape, vLLM checks
# the name itself when the engine is built.
_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]*$"
PositiveInt = Annotated[int, Field(ge=1)]

KV_CACHE_DTYPES = (
    "auto",
    "float16",
    "bfloat16",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
    "nvfp4_ds_mla",
    "turboquant_k8v4",
    "turboquant_4bit_nc",
    "turboquant_k3v4_nc",
    "turboquant_3bit_nc",
    "int4_per_token_head",
    "int8_per_token_head",
    "fp8_per_token_head",
    "nvfp4",
    "nvfp4_4over6",
)
KvCacheDtype = Literal[
    "auto",
    "float16",
    "bfloat16",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
    "nvfp4_ds_mla",
    "turboquant_k8v4",
    "turboquant_4bit_nc",
    "turboquant_k3v4_nc",
    "turboquant_3bit_nc",
    "int4_per_token_head",
    "int8_per_token_head",
    "fp8_per_token_head",
    "nvfp4",
    "nvfp4_4over6",
]
AttentionBackend = Literal[
    "FLASH_ATTN",
    "FLASH_ATTN_DIFFKV",
    "TRITON_ATTN",
    "ROCM_ATTN",
    "ROCM_AITER_MLA",
    "ROCM_AITER_TRITON_MLA",
    "ROCM_AITER_FA",
    "ROCM_AITER_MLA_SPARSE",
    "XPU_MLA_SPARSE",
    "FLASHINFER",
    "FLASHINFER_MLA",
    "FLASHINFER_MLA_SPARSE",
    "TRITON_MLA",
    "TRITON_MLA_SPARSE",
    "CUTLASS_MLA",
    "FLASHMLA",
    "FLASHMLA_SPARSE",
    "FLASH_ATTN_MLA",
    "NO_ATTENTION",
    "FLEX_ATTENTION",
    "TREE_ATTN",
    "ROCM_AITER_UNIFIED_ATTN",
    "CPU_ATTN",
    "TURBOQUANT",
]
MambaDtype = Literal["auto", "float32", "float16", "bfloat16"]
# KV cache dtypes for models with multi-head latent attention (DeepSeek); a Llama preset has none.
MLA_KV_CACHE_DTYPES = ("fp8_ds_mla", "nvfp4_ds_mla")
# --quantization values that take a quantization_config (online quantization); others read the checkpoint's.
ONLINE_QUANTIZATION = (
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "mxfp8",
    "mxfp4",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "lut_b_moe",
    "online",
)
DEFAULT_MAX_LOGPROBS = 20  # EngineArgs.max_logprobs


class VllmEngine(EngineGroup):
    """Keyword arguments of ``vllm.LLM`` (its ``EngineArgs``)."""

    # --- parallelism -------------------------------------------------------------------------------------------
    tensor_parallel_size: int | None = _field(
        "GPUs each layer is split across (tensor parallelism); all-reduce per layer", 2, ge=1
    )
    pipeline_parallel_size: int | None = _field(
        "pipeline stages the layers are split into, one GPU group each", 2, ge=1
    )
    data_parallel_size: int | None = _field("independent engine replicas the requests are spread over", 2, ge=1)
    prefill_context_parallel_size: int | None = _field(
        "ranks that split the prefill of one sequence (context parallelism)", 2, ge=1
    )
    decode_context_parallel_size: int | None = _field(
        "ranks within the tensor-parallel group that shard the decode KV cache; must divide tensor_parallel_size",
        2,
        ge=1,
    )
    dcp_kv_cache_interleave_size: int | None = _field(
        "tokens stored together on one rank when the KV cache is sharded for decode context parallelism", 16, ge=1
    )
    cp_kv_cache_interleave_size: int | None = _field(
        "tokens stored together on one rank when the KV cache is sharded for context parallelism", 16, ge=1
    )
    dcp_comm_backend: Literal["ag_rs", "a2a"] | None = _field(
        "collective used by decode context parallelism: all-gather/reduce-scatter or all-to-all", "a2a"
    )
    dcp_q_replicate: bool | None = _field(
        "replicate the MLA query projection within a decode-context-parallel group to skip its all-gather", True
    )
    distributed_executor_backend: Literal["ray", "mp", "uni", "external_launcher"] | None = _field(
        "how the model workers are run: multiprocessing, Ray, in-process, or an external launcher", "mp"
    )
    disable_custom_all_reduce: bool | None = _field(
        "use NCCL all-reduce instead of vLLM's custom all-reduce kernel", True
    )
    enable_expert_parallel: bool | None = _field(
        "split MoE experts across GPUs (expert parallelism) instead of tensor-splitting each expert", True
    )
    enable_eplb: bool | None = _field(
        "rebalance MoE experts across GPUs by observed load; needs enable_expert_parallel", True
    )
    eplb_config: dict[str, Any] | None = _field(
        "expert load balancing settings (window_size, step_interval, num_redundant_experts, ...)",
        {"num_redundant_experts": 32},
    )
    expert_placement_strategy: Literal["linear", "round_robin"] | None = _field(
        "how MoE experts are laid out over the expert-parallel ranks", "round_robin"
    )
    all2all_backend: str | None = _field(
        "all-to-all kernel of MoE expert parallelism (allgather_reducescatter, naive, deepep_high_throughput, "
        "deepep_low_latency, flashinfer_nvlink_one_sided, ...); vLLM checks the name",
        "deepep_low_latency",
        pattern=_NAME_PATTERN,
    )
    data_parallel_backend: Literal["ray", "mp"] | None = _field(
        "how data-parallel replicas are launched: multiprocessing or Ray", "ray"
    )
    dp_sync_interval: int | None = _field(
        "engine steps between the data-parallel all-reduces that check whether every replica is done", 32, ge=1
    )
    disable_nccl_for_dp_synchronization: bool | None = _field(
        "use Gloo (CPU) instead of NCCL (GPU) for the data-parallel synchronisation all-reduce", True
    )
    enable_dbo: bool | None = _field(
        "dual batch overlap: split a batch into two micro-batches to overlap communication and compute", True
    )
    dbo_decode_token_threshold: int | None = _field(
        "smallest decode-only batch (tokens) that dual batch overlap splits", 64, ge=0
    )
    dbo_prefill_token_threshold: int | None = _field(
        "smallest batch with prefills (tokens) that dual batch overlap splits", 1024, ge=0
    )
    ubatch_size: int | None = _field("micro-batches a batch is split into for overlap (0: not split)", 2, ge=0)
    enable_hc_sp: bool | None = _field(
        "sequence parallelism for the HyperConnection computation of models that have it", True
    )
    numa_bind: bool | None = _field("bind each GPU worker process to the NUMA node of its GPU", True)
    numa_bind_nodes: list[int] | None = _field("NUMA node of each GPU worker, in worker order", [0])
    numa_bind_cpus: list[str] | None = _field("CPU list (taskset syntax) of each GPU worker, in worker order", ["0-15"])

    # --- batching and scheduling -------------------------------------------------------------------------------
    max_num_seqs: int | None = _field(
        "most sequences in one engine step (the running batch); below the experiment's batch_size it caps the "
        "batch actually run",
        64,
        ge=1,
    )
    max_num_batched_tokens: int | None = _field(
        "token budget of one engine step (prefill chunks plus decodes); must be >= max_num_seqs", 8192, ge=1
    )
    max_num_scheduled_tokens: int | None = _field(
        "most tokens the scheduler places in one step, within max_num_batched_tokens", 4096, ge=1
    )
    max_num_active_seqs: int | None = _field("most requests the scheduler admits into running at once", 32, ge=1)
    enable_chunked_prefill: bool | None = _field(
        "split long prompts into chunks scheduled alongside decodes; off needs max_num_batched_tokens >= max_model_len",
        False,
    )
    long_prefill_token_threshold: int | None = _field(
        "prompt length (tokens) above which chunked prefill treats a request as long (0: vLLM decides)", 512, ge=0
    )
    long_prefill_token_threshold_adaptive: bool | None = _field(
        "raise the long-prefill threshold to a fair share of the token budget over the queued requests", True
    )
    prefill_schedule_interval: int | None = _field(
        "admit new prefills only every N engine steps, the steps between decode alone", 2, ge=1
    )
    scheduling_policy: Literal["fcfs", "priority"] | None = _field(
        "request order: first come first served, or by request priority", "priority"
    )
    scheduler_reserve_full_isl: bool | None = _field(
        "admit a request only when its whole prompt fits in the KV cache, not just its first chunk", False
    )
    async_scheduling: bool | None = _field(
        "schedule the next step while the GPU runs the current one (False turns it off)", False
    )
    stream_interval: int | None = _field(
        "tokens buffered per request before its output is sent on (host-side overhead)", 8, ge=1
    )
    watermark: float | None = _field(
        "fraction of KV cache blocks kept free when admitting waiting or preempted requests", 0.01, ge=0, lt=1
    )

    # --- memory and KV cache -----------------------------------------------------------------------------------
    gpu_memory_utilization: float | None = _field(
        "fraction of GPU memory vLLM may use (weights, activations, KV cache); ignored when "
        "kv_cache_memory_bytes is set",
        0.8,
        gt=0,
        le=1,
    )
    kv_cache_memory_bytes: int | None = _field(
        "KV cache size per GPU in bytes, instead of deriving it from gpu_memory_utilization", 8 * 2**30, ge=1
    )
    num_gpu_blocks_override: int | None = _field(
        "number of KV cache blocks, instead of the number memory profiling finds", 2048, ge=1
    )
    block_size: int | None = _field("tokens per KV cache block", 32, ge=1)
    max_model_len: int | None = _field(
        "context length (prompt plus output) the engine plans for; must hold workload.input_len + output_len",
        4096,
        ge=1,
    )
    enable_prefix_caching: bool | None = _field(
        "reuse KV cache blocks of prompt prefixes seen before. The warm-up replays the measured prompts, so "
        "with this on, the measured prompts are cache hits and skip their prefill (the tool's default is off)",
        True,
    )
    prefix_caching_hash_algo: Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"] | None = _field(
        "hash used to key prefix-cache blocks (xxhash is cheaper, not cryptographic)", "xxhash"
    )
    prefix_cache_retention_interval: int | None = _field(
        "token interval of retained sliding-window and Mamba prefix-cache checkpoints (0: semantic only)", 1024, ge=0
    )
    prefix_match_unit: int | None = _field(
        "finest token boundary a prefix-cache hit can land on; must divide every block size", 16, ge=1
    )
    kv_cache_dtype: KvCacheDtype | None = _field(
        f"storage type of the KV cache ('auto': the model dtype); one of {', '.join(KV_CACHE_DTYPES)}", "fp8"
    )
    kv_cache_dtype_skip_layers: list[str] | None = _field(
        "layers (indices or attention types such as sliding_window) whose KV cache stays unquantized", ["0"]
    )
    kv_offloading_size: float | None = _field(
        "GiB of CPU buffer the KV cache is offloaded to (all tensor-parallel ranks together)", 16.0, gt=0
    )
    kv_offloading_backend: Literal["native", "lmcache"] | None = _field(
        "KV cache offloading implementation, used when kv_offloading_size is set", "lmcache"
    )
    kv_sharing_fast_prefill: bool | None = _field(
        "let layers that share KV cache skip prefill tokens (models built for it, e.g. Gemma 3n)", True
    )
    disable_hybrid_kv_cache_manager: bool | None = _field(
        "give every attention layer the same KV cache size, even sliding-window layers", True
    )
    disable_sliding_window: bool | None = _field("treat sliding-window attention layers as full attention", True)
    disable_cascade_attn: bool | None = _field("never use cascade attention for shared prefixes", True)
    swa_bounded_replay: bool | None = _field(
        "keep sliding-window KV out of the prefix cache and recompute its last window after a hit", False
    )
    cpu_offload_gb: float | None = _field(
        "GiB of weights per GPU kept in CPU memory and read over the interconnect every forward pass", 4.0, ge=0
    )
    cpu_offload_params: list[str] | None = _field(
        "parameter name segments that cpu_offload_gb offloads (empty: any parameter)", ["experts"]
    )
    offload_backend: str | None = _field(
        "weight offloading implementation ('auto': vLLM picks); vLLM checks the name", "auto", pattern=_NAME_PATTERN
    )
    offload_group_size: int | None = _field(
        "prefetching weight offload: group every N layers and offload the last of each group (0: off)", 8, ge=0
    )
    offload_num_in_group: int | None = _field("layers offloaded per group; must be <= offload_group_size", 2, ge=1)
    offload_params: list[str] | None = _field("parameter name segments the prefetching offload targets", ["mlp"])
    offload_prefetch_step: int | None = _field(
        "layers prefetched ahead by the prefetching offload (>= 1 when it is on)", 2, ge=0
    )

    # --- kernels, compilation, precision -----------------------------------------------------------------------
    enforce_eager: bool | None = _field("run eager PyTorch: no CUDA graphs and no torch.compile", True)
    optimization_level: Literal[0, 1, 2, 3] | None = _field(
        "vLLM's -O level: 0 no compilation, 1 compile with piecewise CUDA graphs, 2 and 3 also full graphs", 0
    )
    performance_mode: Literal["balanced", "interactivity", "throughput"] | None = _field(
        "runtime tuning for latency at small batches, aggregate throughput, or a balance", "throughput"
    )
    compilation_config: dict[str, Any] | None = _field(
        "torch.compile and CUDA graph settings (mode, cudagraph_mode, pass_config, ...)",
        {"cudagraph_mode": "PIECEWISE"},
    )
    cudagraph_capture_sizes: list[PositiveInt] | None = _field(
        "batch sizes CUDA graphs are captured for", [1, 2, 4, 8, 16, 32]
    )
    max_cudagraph_capture_size: int | None = _field(
        "largest batch captured as a CUDA graph; equals max(cudagraph_capture_sizes) when both are set", 256, ge=1
    )
    attention_backend: AttentionBackend | None = _field(
        "attention kernel implementation (None: vLLM picks for the GPU and model)", "FLASHINFER"
    )
    attention_config: dict[str, Any] | None = _field(
        "attention kernel settings (flash_attn_version, use_trtllm_attention, use_cudnn_prefill, ...)",
        {"flash_attn_version": 3},
    )
    kernel_config: dict[str, Any] | None = _field(
        "kernel selection and warm-up settings (moe_backend, enable_flashinfer_autotune, ...)",
        {"enable_flashinfer_autotune": False},
    )
    ir_op_priority: dict[str, list[str]] | None = _field(
        "implementation priority of vLLM IR ops in the forward pass, per op (e.g. rms_norm)", {"rms_norm": ["native"]}
    )
    linear_backend: str | None = _field(
        "GEMM kernels of linear layers (auto, cutlass, triton, marlin, deep_gemm, flashinfer_cutlass, ...); "
        "vLLM checks the name",
        "cutlass",
        pattern=_NAME_PATTERN,
    )
    moe_backend: str | None = _field(
        "MoE expert kernels (auto, triton, deep_gemm, cutlass, flashinfer_trtllm, marlin, ...); vLLM checks the name",
        "triton",
        pattern=_NAME_PATTERN,
    )
    enable_flashinfer_autotune: bool | None = _field(
        "benchmark FlashInfer kernels during warm-up and keep the fastest", True
    )
    enable_batch_sharded_sampling: bool | None = _field("shard the sampling step across tensor-parallel ranks", True)
    use_fp64_gumbel: bool | None = _field("draw sampling noise in FP64 instead of FP32", True)
    model_impl: Literal["auto", "vllm", "transformers", "terratorch"] | None = _field(
        "model implementation: vLLM's own, or the Transformers one run by vLLM", "transformers"
    )
    quantization: str | None = _field(
        "weight quantization method (fp8, awq, gptq, compressed-tensors, bitsandbytes, an online shorthand "
        "such as fp8_per_tensor, ...); vLLM checks the name against the model",
        "fp8",
        pattern=_NAME_PATTERN,
    )
    quantization_config: dict[str, Any] | None = _field(
        "online quantization spec (linear, moe, ignore); only with quantization unset or one of "
        + ", ".join(ONLINE_QUANTIZATION),
        {"linear": "fp8_per_tensor"},
    )
    monokernel: bool | None = _field(
        "run eligible decode layers as one persistent kernel (supported models and GPUs only)", True
    )
    sparse_indexer_topk_backend: str | None = _field(
        "top-k kernel of the sparse-attention indexer (DeepSeek sparse attention); vLLM checks the name",
        "triton",
        pattern=_NAME_PATTERN,
    )
    gdn_prefill_backend: Literal["flashinfer", "triton", "cutedsl", "aiter_flydsl", "sycl"] | None = _field(
        "prefill kernel of gated delta-net layers", "triton"
    )
    kda_decode_backend: Literal["auto", "native", "flashinfer", "triton"] | None = _field(
        "decode kernel of Kimi delta attention layers", "triton"
    )
    kda_prefill_backend: Literal["auto", "triton", "flashkda", "flashinfer", "fused"] | None = _field(
        "prefill kernel of Kimi delta attention layers", "triton"
    )
    engram_config: dict[str, Any] | None = _field(
        "storage of n-gram embedding tables (cpu_offload, embedding_across_dp, ...); models with them only",
        {"cpu_offload": False},
    )

    # --- Mamba / state-space layers ----------------------------------------------------------------------------
    mamba_backend: Literal["triton", "flashinfer"] | None = _field(
        "selective-state-update kernel of Mamba layers", "flashinfer"
    )
    mamba_config: dict[str, Any] | None = _field(
        "Mamba kernel settings (backend, enable_stochastic_rounding, stochastic_rounding_philox_rounds)",
        {"backend": "flashinfer"},
    )
    mamba_block_size: int | None = _field(
        "tokens per Mamba cache block, a multiple of 8; needs enable_prefix_caching", 256, ge=8, multiple_of=8
    )
    mamba_cache_dtype: MambaDtype | None = _field("storage type of the Mamba conv and SSM state", "float32")
    mamba_ssm_cache_dtype: MambaDtype | None = _field("storage type of the Mamba SSM state alone", "float32")
    mamba_cache_mode: Literal["all", "align", "none"] | None = _field(
        "which Mamba states are cached for prefix reuse", "align"
    )
    mamba_ssu_algorithm: str | None = _field(
        "selective-state-update algorithm of Mamba layers; vLLM checks the name", "default", pattern=_NAME_PATTERN
    )
    enable_mamba_cache_stochastic_rounding: bool | None = _field(
        "stochastic rounding when writing the SSM state to an fp16 cache", True
    )
    mamba_cache_philox_rounds: int | None = _field(
        "Philox rounds of the stochastic-rounding random numbers (0: Triton's default)", 10, ge=0
    )
    enable_mamba_shared_prefix_checkpoint: bool | None = _field(
        "also checkpoint Mamba state where a shared prefix ends, not only at the prompt tail", True
    )
    use_replayssm: bool | None = _field(
        "ReplaySSM decode kernel: keep recent SSM inputs and store the full state only on flush", True
    )
    replayssm_buffer_len: int | None = _field("history length of the ReplaySSM kernel", 32, ge=1)

    # --- speculative decoding ----------------------------------------------------------------------------------
    speculative_config: dict[str, Any] | None = _field(
        "speculative decoding: method (ngram, eagle, eagle3, mtp, draft_model, ...) or model, and "
        "num_speculative_tokens",
        {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4},
    )
    spec_method: str | None = _field(
        "speculative decoding method, shorthand for speculative_config.method", "ngram", pattern=_NAME_PATTERN
    )
    spec_model: str | None = _field(
        "draft model of speculative decoding, shorthand for speculative_config.model",
        "meta-llama/Llama-3.2-1B",
        min_length=1,
    )
    spec_tokens: int | None = _field(
        "tokens proposed per step, shorthand for speculative_config.num_speculative_tokens", 4, ge=1
    )

    # --- extra work per token ----------------------------------------------------------------------------------
    enable_return_routed_experts: bool | None = _field(
        "record and return which MoE experts each token was routed to", True
    )
    return_sampling_mask: bool | None = _field(
        "return the set of tokens each sample could have drawn after sampling filters", True
    )
    watermark_config: dict[str, Any] | None = _field(
        "text watermarking of generated tokens (key, algorithm, context_width, ...)", {"key": 42}
    )

    @field_validator("speculative_config")
    @classmethod
    def _speculative_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        if not (value.get("method") or value.get("model")):
            raise ValueError("needs a 'method' (ngram, eagle, eagle3, mtp, draft_model, ...) or a draft 'model'")
        tokens = value.get("num_speculative_tokens")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ValueError(f"num_speculative_tokens must be an integer >= 1 (got {tokens!r})")
        return value

    @field_validator("cudagraph_capture_sizes")
    @classmethod
    def _capture_sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not value:
            raise ValueError("must list at least one batch size")
        return value


class VllmSampling(EngineGroup):
    """Keyword arguments of ``vllm.SamplingParams``."""

    temperature: float | None = _field(
        "sampling temperature; 0 is greedy (the tool's default), above 0 samples", 0.8, ge=0
    )
    top_p: float | None = _field(
        "nucleus sampling: keep the smallest set of tokens with this total probability, in (0, 1]", 0.9, gt=0, le=1
    )
    top_k: int | None = _field("keep only the k most likely tokens (0 or -1: all)", 50, ge=-1)
    min_p: float | None = _field(
        "drop tokens less likely than this fraction of the most likely one, in [0, 1]", 0.05, ge=0, le=1
    )
    presence_penalty: float | None = _field("penalty on tokens already generated, in [-2, 2]", 0.5, ge=-2, le=2)
    frequency_penalty: float | None = _field(
        "penalty growing with how often a token was generated, in [-2, 2]", 0.5, ge=-2, le=2
    )
    repetition_penalty: float | None = _field(
        "multiplicative penalty on tokens in the prompt or output (1: none), > 0", 1.1, gt=0
    )
    n: int | None = _field(
        "completions generated per prompt (each of workload.output_len tokens); > 1 needs temperature > 0", 2, ge=1
    )
    seed: int | None = _field("per-request sampling seed (a seeded request draws from its own generator)", 1234)
    logprobs: int | None = _field(
        "log probabilities returned per output token (-1: the whole vocabulary); at most the engine's "
        "max_logprobs (20 unless vllm.extra sets engine.max_logprobs)",
        5,
        ge=-1,
    )
    logprob_token_ids: list[int] | None = _field(
        "token ids whose log probability is returned at every output position", [1, 2, 3]
    )
    prompt_logprobs: int | None = _field(
        "log probabilities returned per prompt token (-1: the whole vocabulary); at most max_logprobs", 5, ge=-1
    )
    prompt_logprob_start: int | None = _field("first prompt position scored for prompt_logprobs", 8, ge=0)
    prompt_logprob_token_ids: list[list[int]] | None = _field(
        "token ids scored at each prompt position (one list per position)", [[1, 2]]
    )
    logit_bias: dict[int, float] | None = _field("added to the logits of these token ids before sampling", {100: -5.0})
    allowed_token_ids: list[int] | None = _field("only these token ids may be generated", [1, 2, 3, 4])
    bad_words: list[str] | None = _field(
        "words that may not be generated (needs a tokenizer: a hub model, not random:)", ["never"]
    )
    structured_outputs: dict[str, Any] | None = _field(
        "grammar-constrained decoding: json, regex, choice, grammar, ... (needs a tokenizer: a hub model)",
        {"regex": "[a-z]+"},
    )
    detokenize: bool | None = _field(
        "turn output tokens into text as they are generated (host CPU work); the tool's default is off; on "
        "needs a tokenizer (a hub model)",
        True,
    )
    skip_reading_prefix_cache: bool | None = _field(
        "do not read this request's prompt from the prefix cache (its prefill is computed)", True
    )
    watermarking: bool | None = _field("apply the engine's watermark (engine.watermark_config) to this request", True)


class VllmOptions(EngineSection):
    backend: ClassVar[str] = "vllm"
    snapshot_groups: ClassVar[dict[str, tuple[str, ...]]] = {"engine": ("engine",), "sampling": ("sampling",)}
    load_groups: ClassVar[tuple[str, ...]] = ("engine",)
    set_elsewhere: ClassVar[dict[str, str]] = {
        "engine.model": "model",
        "engine.dtype": "dtype",
        "sampling.max_tokens": "workload.output_len",
        "sampling.min_tokens": "workload.output_len",
    }
    reserved: ClassVar[dict[str, str]] = {
        "engine.load_format": "random: presets load dummy (random) weights from the written config; hub models "
        "load their checkpoint",
        "engine.skip_tokenizer_init": "random: presets have no tokenizer; prompts are token ids already",
        "engine.disable_log_stats": "kept False: vLLM fills the per-request metrics the batch's TTFT comes from "
        "only with stats on",
        "sampling.ignore_eos": "always True: every prompt generates exactly workload.output_len tokens",
    }

    engine: VllmEngine = VllmEngine()
    sampling: VllmSampling = VllmSampling()

    def completions_per_prompt(self) -> int:
        return int(self.sampling.n or 1)

    def check(self, experiment: Any) -> None:
        problems = [*self._engine_problems(experiment), *self._sampling_problems(experiment)]
        if problems:
            raise ValueError("; ".join(problems))

    def _engine_problems(self, experiment: Any) -> list[str]:
        e = self.engine
        out: list[str] = []
        preset = _preset(experiment.model)
        needed = experiment.workload.input_len + experiment.workload.output_len
        if e.max_model_len is not None and e.max_model_len < needed:
            out.append(
                f"vllm.engine.max_model_len: must be >= workload.input_len + workload.output_len "
                f"({needed}); got {e.max_model_len}"
            )
        model_len = (
            e.max_model_len
            if e.max_model_len is not None
            else (int(preset["max_position_embeddings"]) if preset else None)
        )
        if (
            e.enable_chunked_prefill is False
            and e.max_num_batched_tokens is not None
            and model_len is not None
            and e.max_num_batched_tokens < model_len
        ):
            out.append(
                f"vllm.engine.max_num_batched_tokens: with enable_chunked_prefill false it must be >= "
                f"max_model_len ({model_len}); got {e.max_num_batched_tokens} (raise it, lower "
                f"vllm.engine.max_model_len, or turn chunked prefill on)"
            )
        if (
            e.max_num_batched_tokens is not None
            and e.max_num_seqs is not None
            and e.max_num_batched_tokens < e.max_num_seqs
        ):
            out.append(
                f"vllm.engine.max_num_batched_tokens: must be >= vllm.engine.max_num_seqs "
                f"({e.max_num_seqs}); got {e.max_num_batched_tokens}"
            )
        if (
            e.max_num_scheduled_tokens is not None
            and e.max_num_batched_tokens is not None
            and e.max_num_scheduled_tokens > e.max_num_batched_tokens
        ):
            out.append(
                f"vllm.engine.max_num_scheduled_tokens: must be <= vllm.engine.max_num_batched_tokens "
                f"({e.max_num_batched_tokens}); got {e.max_num_scheduled_tokens}"
            )
        tp = e.tensor_parallel_size or 1
        if e.decode_context_parallel_size is not None and tp % e.decode_context_parallel_size:
            out.append(
                f"vllm.engine.decode_context_parallel_size: must divide vllm.engine.tensor_parallel_size "
                f"({tp}); got {e.decode_context_parallel_size}"
            )
        if e.enable_eplb and not e.enable_expert_parallel:
            out.append("vllm.engine.enable_eplb: needs vllm.engine.enable_expert_parallel: true")
        if (
            e.cudagraph_capture_sizes is not None
            and e.max_cudagraph_capture_size is not None
            and max(e.cudagraph_capture_sizes) != e.max_cudagraph_capture_size
        ):
            out.append(
                f"vllm.engine.max_cudagraph_capture_size: must equal the largest of "
                f"vllm.engine.cudagraph_capture_sizes ({max(e.cudagraph_capture_sizes)}) when both are set; "
                f"got {e.max_cudagraph_capture_size}"
            )
        if e.kv_cache_dtype == "fp8_inc":
            out.append(
                "vllm.engine.kv_cache_dtype: fp8_inc is for Intel Gaudi; on a CUDA GPU use fp8, fp8_e4m3 or fp8_e5m2"
            )
        if preset is not None and e.kv_cache_dtype in MLA_KV_CACHE_DTYPES:
            out.append(
                f"vllm.engine.kv_cache_dtype: {e.kv_cache_dtype} is for models with multi-head latent "
                f"attention; {experiment.model} is a Llama shape: use auto, fp8, fp8_e4m3 or fp8_e5m2"
            )
        if (
            e.quantization_config is not None
            and e.quantization is not None
            and e.quantization not in ONLINE_QUANTIZATION
        ):
            out.append(
                f"vllm.engine.quantization_config: only with vllm.engine.quantization unset or one of "
                f"{', '.join(ONLINE_QUANTIZATION)}; got quantization {e.quantization!r}"
            )
        if (
            e.offload_group_size
            and e.offload_num_in_group is not None
            and e.offload_num_in_group > e.offload_group_size
        ):
            out.append(
                f"vllm.engine.offload_num_in_group: must be <= vllm.engine.offload_group_size "
                f"({e.offload_group_size}); got {e.offload_num_in_group}"
            )
        if e.offload_group_size and e.offload_prefetch_step == 0:
            out.append("vllm.engine.offload_prefetch_step: must be >= 1 when vllm.engine.offload_group_size > 0")
        if e.mamba_block_size is not None and e.enable_prefix_caching is not True:
            out.append("vllm.engine.mamba_block_size: only with vllm.engine.enable_prefix_caching: true")
        if e.use_replayssm and e.mamba_cache_mode == "all":
            out.append("vllm.engine.use_replayssm: needs vllm.engine.mamba_cache_mode none or align; got all")
        if e.speculative_config is not None and (e.spec_method or e.spec_model or e.spec_tokens):
            out.append(
                "vllm.engine.speculative_config: give speculative decoding either as speculative_config or "
                "as spec_method/spec_model/spec_tokens, not both"
            )
        if e.spec_tokens is not None and not (e.spec_method or e.spec_model):
            out.append("vllm.engine.spec_tokens: needs vllm.engine.spec_method or vllm.engine.spec_model")
        if preset is not None and e.engram_config is not None:
            out.append(
                f"vllm.engine.engram_config: only for models with n-gram embedding layers; {experiment.model} has none"
            )
        return out

    def _sampling_problems(self, experiment: Any) -> list[str]:
        s = self.sampling
        out: list[str] = []
        if s.n is not None and s.n > 1 and not (s.temperature or 0) > 0:
            out.append(
                f"vllm.sampling.n: {s.n} completions need vllm.sampling.temperature > 0 (greedy decoding "
                f"makes them identical; the tool's default temperature is 0)"
            )
        max_logprobs = self.extra.get("engine.max_logprobs", DEFAULT_MAX_LOGPROBS)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(s, name)
            if value is None or max_logprobs == -1:
                continue
            if value == -1 or value > max_logprobs:
                out.append(
                    f"vllm.sampling.{name}: at most the engine's max_logprobs ({max_logprobs}; set "
                    f"vllm.extra engine.max_logprobs to raise it, -1 for the whole vocabulary); got {value}"
                )
        if s.prompt_logprob_start is not None and s.prompt_logprobs is None and s.prompt_logprob_token_ids is None:
            out.append(
                "vllm.sampling.prompt_logprob_start: only with vllm.sampling.prompt_logprobs or "
                "prompt_logprob_token_ids"
            )
        if _preset(experiment.model) is not None:
            for name in ("bad_words", "structured_outputs"):
                if getattr(s, name) is not None:
                    out.append(f"vllm.sampling.{name}: needs a tokenizer; random: presets have none (use a hub model)")
            if s.detokenize:
                out.append(
                    "vllm.sampling.detokenize: true needs a tokenizer; random: presets have none (use a hub model)"
                )
        if s.watermarking and self.engine.watermark_config is None:
            out.append("vllm.sampling.watermarking: needs vllm.engine.watermark_config")
        return out


def _preset(model: str) -> dict[str, int | float] | None:
    try:
        return random_preset(model)
    except KeyError:
        return None
