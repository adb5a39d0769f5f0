"""The trtllm section of an experiment: TensorRT-LLM's ``LLM`` API (PyTorch backend, ``TorchLlmArgs``) and its
``SamplingParams``.

- ``engine``: keywords of ``tensorrt_llm.LLM`` (``TorchLlmArgs`` and the ``BaseLlmArgs`` it inherits). Nested
  engine configs (``cuda_graph_config``, ``scheduler_config``, ``moe_config``, ``torch_compile_config``,
  ``attention_dp_config``, ``sparse_attention_config``, ``speculative_config``) are typed sub-objects here; the
  adapter builds the engine's config objects from them.
- ``kv_cache``: fields of ``KvCacheConfig``, passed as ``kv_cache_config``. The tool turns block reuse off unless
  it is set here (the warm-up replays the measured prompts).
- ``sampling``: keywords of ``SamplingParams``. The workload forces the output length
  (``max_tokens = min_tokens = workload.output_len``, ``ignore_eos``), and decoding is greedy unless set here.

Quantization: the PyTorch backend's ``LLM`` has no quantization argument (``quant_config`` belongs to the
TensorRT-engine backend); it reads the scheme (FP8, NVFP4, INT4 AWQ, INT8 weight-only...) from a pre-quantized
checkpoint (``hf_quant_config.json`` or ``quantization_config``), so it is chosen through ``model``. What the
``LLM`` does take is the KV-cache precision (``kv_cache.dtype``) and ``force_dynamic_quantization``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lem_shared.params.engine import EngineGroup, EngineSection

AttentionBackend = Literal["TRTLLM", "FLASHINFER", "FLASHINFER_STAR_ATTENTION", "VANILLA"]
ATTENTION_BACKENDS = get_args(AttentionBackend)
Sampler = Literal["TRTLLMSampler", "TorchSampler", "auto"]
SAMPLERS = get_args(Sampler)
AllreduceStrategy = Literal[
    "AUTO", "NCCL", "UB", "MINLATENCY", "ONESHOT", "TWOSHOT", "LOWPRECISION", "MNNVL", "NCCL_SYMMETRIC"
]
ALLREDUCE = get_args(AllreduceStrategy)
CapacityPolicy = Literal["MAX_UTILIZATION", "GUARANTEED_NO_EVICT", "STATIC_BATCH"]
CAPACITY_POLICIES = get_args(CapacityPolicy)
ChunkingPolicy = Literal["FIRST_COME_FIRST_SERVED", "EQUAL_PROGRESS"]
CHUNKING_POLICIES = get_args(ChunkingPolicy)
MoeBackend = Literal["CUTLASS", "CUTEDSL", "WIDEEP", "TRTLLM", "DEEPGEMM", "VANILLA", "TRITON"]
MOE_BACKENDS = get_args(MoeBackend)
# Speculative decoding methods the PyTorch backend runs (Medusa and Lookahead are TensorRT-engine only).
SpeculativeMethod = Literal["NGram", "MTP", "Eagle", "DraftTarget", "AUTO"]
SPECULATIVE = get_args(SpeculativeMethod)
# Fields of KvCacheConfig the tool sets unless the experiment does.
KV_CACHE_DEFAULTS: dict[str, Any] = {"enable_block_reuse": False}


class _Nested(BaseModel):
    """A nested engine config: only the fields set are passed; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CudaGraphOptions(_Nested):
    """Fields of ``CudaGraphConfig``."""

    batch_sizes: list[int] | None = Field(
        None, description="batch sizes to capture graphs for (instead of max_batch_size)", examples=[[1, 2, 4, 8]]
    )
    max_batch_size: int | None = Field(
        None, ge=0, description="capture graphs for generated sizes up to this", examples=[64]
    )
    enable_padding: bool | None = Field(
        None, description="pad a batch up to the next captured size so it runs as a graph", examples=[True]
    )

    @model_validator(mode="after")
    def _one_size_rule(self) -> CudaGraphOptions:
        if self.batch_sizes is not None and self.max_batch_size is not None:
            raise ValueError("give batch_sizes or max_batch_size, not both")
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise ValueError("batch_sizes must be a non-empty list of positive integers")
        return self


class DynamicBatchOptions(_Nested):
    """Fields of ``DynamicBatchConfig`` (all three are required by the engine)."""

    enable_batch_size_tuning: bool = Field(description="tune the batch size at runtime", examples=[True])
    enable_max_num_tokens_tuning: bool = Field(description="tune max_num_tokens at runtime", examples=[True])
    dynamic_batch_moving_average_window: int = Field(
        ge=1, description="window of the moving average of input/output lengths", examples=[128]
    )


class SchedulerOptions(_Nested):
    """Fields of ``SchedulerConfig``."""

    capacity_scheduler_policy: CapacityPolicy | None = Field(
        None, description=f"how requests are admitted: {', '.join(CAPACITY_POLICIES)}", examples=["MAX_UTILIZATION"]
    )
    context_chunking_policy: ChunkingPolicy | None = Field(
        None,
        description=f"order of context chunks under chunked prefill: {', '.join(CHUNKING_POLICIES)}",
        examples=["EQUAL_PROGRESS"],
    )
    dynamic_batch_config: DynamicBatchOptions | None = Field(
        None,
        description="runtime tuning of batch size and token budget",
        examples=[
            {
                "enable_batch_size_tuning": True,
                "enable_max_num_tokens_tuning": False,
                "dynamic_batch_moving_average_window": 128,
            }
        ],
    )


class MoeOptions(_Nested):
    """Fields of ``MoeConfig`` (mixture-of-experts models only)."""

    backend: MoeBackend | None = Field(None, description=f"MoE kernels: {', '.join(MOE_BACKENDS)}", examples=["TRTLLM"])
    max_num_tokens: int | None = Field(
        None, ge=1, description="split MoE inputs into chunks of at most this many tokens", examples=[4096]
    )
    disable_finalize_fusion: bool | None = Field(
        None, description="turn off the FC2+finalize fusion of CUTLASS MoE", examples=[True]
    )
    use_low_precision_moe_combine: bool | None = Field(
        None, description="combine expert outputs in low precision (NVFP4 only)", examples=[True]
    )


class TorchCompileOptions(_Nested):
    """Fields of ``TorchCompileConfig``; giving the object (even ``{}``) turns torch.compile on."""

    enable_fullgraph: bool | None = Field(None, description="compile the full graph", examples=[False])
    enable_inductor: bool | None = Field(None, description="use the inductor backend", examples=[True])
    enable_piecewise_cuda_graph: bool | None = Field(
        None, description="piecewise CUDA graphs (also covering prefill)", examples=[True]
    )
    capture_num_tokens: list[int] | None = Field(
        None, description="token counts to capture piecewise graphs for", examples=[[64, 128, 256]]
    )
    enable_userbuffers: bool | None = Field(None, description="userbuffers for compiled allreduce", examples=[False])
    max_num_streams: int | None = Field(None, ge=1, description="CUDA streams torch.compile may use", examples=[2])

    @model_validator(mode="after")
    def _positive(self) -> TorchCompileOptions:
        if self.capture_num_tokens is not None and any(t < 1 for t in self.capture_num_tokens):
            raise ValueError("capture_num_tokens must hold positive integers")
        return self


class AttentionDpOptions(_Nested):
    """Fields of ``AttentionDpConfig``."""

    enable_balance: bool | None = Field(None, description="balance requests over attention-DP ranks", examples=[True])
    timeout_iters: int | None = Field(None, ge=0, description="iterations before balancing gives up", examples=[20])
    batching_wait_iters: int | None = Field(None, ge=0, description="iterations to wait to fill a batch", examples=[5])


class SparseAttentionOptions(_Nested):
    """Fields of ``RocketSparseAttentionConfig`` (the one sparse attention algorithm)."""

    algorithm: Literal["rocket"] = Field(description="sparse attention algorithm", examples=["rocket"])
    window_size: int | None = Field(None, ge=1, description="window of snap KV", examples=[32])
    kernel_size: int | None = Field(None, ge=1, description="pooling kernel of snap KV", examples=[63])
    topr: int | float | None = Field(None, gt=0, description="top-r", examples=[64])
    topk: int | None = Field(None, ge=1, description="top-k blocks kept", examples=[64])
    prompt_budget: int | None = Field(None, ge=1, description="KV tokens kept per prompt", examples=[1024])
    page_size: int | None = Field(None, ge=1, description="page size", examples=[4])


class SpeculativeOptions(_Nested):
    """A ``speculative_config``: ``decoding_type`` picks the config class (``NGramDecodingConfig``, ...)."""

    decoding_type: SpeculativeMethod = Field(
        description=f"speculation method: {', '.join(SPECULATIVE)}", examples=["NGram"]
    )
    max_draft_len: int | None = Field(None, ge=1, description="draft tokens per step", examples=[4])
    speculative_model_dir: str | None = Field(
        None, description="draft model (Eagle, DraftTarget)", examples=["yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"]
    )
    max_concurrency: int | None = Field(
        None, ge=1, description="speculation is off above this batch size", examples=[16]
    )
    max_matching_ngram_size: int | None = Field(None, ge=1, description="NGram: longest pattern searched", examples=[4])
    is_keep_all: bool | None = Field(None, description="NGram: keep all candidate matches", examples=[False])
    is_use_oldest: bool | None = Field(None, description="NGram: use the oldest match", examples=[False])
    is_public_pool: bool | None = Field(None, description="NGram: one pool shared by all requests", examples=[False])
    num_nextn_predict_layers: int | None = Field(None, ge=1, description="MTP: prediction layers", examples=[3])
    eagle3_one_model: bool | None = Field(None, description="Eagle: draft and target in one model", examples=[False])

    @model_validator(mode="after")
    def _method_fields(self) -> SpeculativeOptions:
        kind = self.decoding_type
        if kind in ("Eagle", "DraftTarget") and not self.speculative_model_dir:
            raise ValueError(f"{kind} needs speculative_model_dir (the draft model)")
        if kind in ("NGram", "Eagle", "DraftTarget") and self.max_draft_len is None:
            raise ValueError(f"{kind} needs max_draft_len")
        if kind == "NGram" and self.max_matching_ngram_size is None:
            raise ValueError("NGram needs max_matching_ngram_size")
        own = {
            "NGram": {"max_matching_ngram_size", "is_keep_all", "is_use_oldest", "is_public_pool"},
            "MTP": {"num_nextn_predict_layers"},
            "Eagle": {"eagle3_one_model"},
        }
        for method, names in own.items():
            stray = sorted(n for n in names if getattr(self, n) is not None and kind != method)
            if stray:
                raise ValueError(f"{stray[0]} applies to decoding_type {method} only (this is {kind})")
        return self


class TrtllmEngine(EngineGroup):
    """Keyword arguments of ``tensorrt_llm.LLM`` (its ``TorchLlmArgs``)."""

    # parallelism
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs the weights are split over (TP)", examples=[2]
    )
    pipeline_parallel_size: int | None = Field(None, ge=1, description="pipeline stages (PP)", examples=[2])
    context_parallel_size: int | None = Field(None, ge=1, description="context parallel size (CP)", examples=[2])
    cp_config: dict[str, Any] | None = Field(
        None, description="context-parallel algorithm settings, e.g. {cp_type: HELIX}", examples=[{"cp_type": "HELIX"}]
    )
    moe_tensor_parallel_size: int | None = Field(None, ge=1, description="TP size of MoE expert weights", examples=[2])
    moe_expert_parallel_size: int | None = Field(
        None, ge=1, description="expert parallel size (EP) of MoE layers", examples=[2]
    )
    moe_cluster_parallel_size: int | None = Field(
        None, ge=1, description="cluster parallel size of MoE experts", examples=[2]
    )
    enable_attention_dp: bool | None = Field(
        None, description="data-parallel attention (each rank its requests)", examples=[True]
    )
    enable_lm_head_tp_in_adp: bool | None = Field(
        None, description="tensor-parallel LM head under attention DP", examples=[True]
    )
    attention_dp_config: AttentionDpOptions | None = Field(
        None,
        description="load balancing of the attention-DP scheduler",
        examples=[{"enable_balance": True, "timeout_iters": 20, "batching_wait_iters": 5}],
    )
    allreduce_strategy: AllreduceStrategy | None = Field(
        None, description=f"all-reduce kernels under TP: {', '.join(ALLREDUCE)}", examples=["NCCL"]
    )
    # batching and memory
    max_batch_size: int | None = Field(
        None, ge=1, description="most requests scheduled in one iteration", examples=[64]
    )
    max_num_tokens: int | None = Field(
        None, ge=1, description="token budget of one iteration (all requests)", examples=[4096]
    )
    max_seq_len: int | None = Field(
        None, ge=1, description="longest prompt + output a request may reach", examples=[4096]
    )
    max_input_len: int | None = Field(None, ge=1, description="longest prompt accepted", examples=[2048])
    max_beam_width: int | None = Field(
        None, ge=1, description="widest beam search the engine allocates for", examples=[4]
    )
    enable_chunked_prefill: bool | None = Field(
        None, description="split long prompts into chunks scheduled with decode steps", examples=[True]
    )
    scheduler_config: SchedulerOptions | None = Field(
        None,
        description="request admission and context-chunking policies",
        examples=[{"capacity_scheduler_policy": "MAX_UTILIZATION", "context_chunking_policy": "EQUAL_PROGRESS"}],
    )
    disable_overlap_scheduler: bool | None = Field(
        None, description="turn off overlapping host scheduling with GPU execution", examples=[True]
    )
    batch_wait_timeout_ms: float | None = Field(
        None, ge=0, description="wait up to this for max_batch_size requests before scheduling", examples=[5.0]
    )
    batch_wait_timeout_iters: int | None = Field(
        None, ge=0, description="iterations to wait to accumulate requests before scheduling", examples=[2]
    )
    batch_wait_max_tokens_ratio: float | None = Field(
        None, ge=0, le=1, description="accumulate requests until this share of max_num_tokens", examples=[0.5]
    )
    garbage_collection_gen0_threshold: int | None = Field(
        None, ge=0, description="Python GC generation-0 threshold of the executor loop", examples=[50000]
    )
    # kernels, graphs, compilation
    attn_backend: AttentionBackend | None = Field(
        None, description=f"attention kernels: {', '.join(ATTENTION_BACKENDS)}", examples=["FLASHINFER"]
    )
    cuda_graph_config: CudaGraphOptions | Literal[False] | None = Field(
        None,
        description="CUDA graphs for decode-only batches (on by default); false turns them off",
        examples=[{"max_batch_size": 64, "enable_padding": True}],
    )
    torch_compile_config: TorchCompileOptions | None = Field(
        None,
        description="torch.compile of the model (off by default; {} turns it on)",
        examples=[{"enable_inductor": True, "enable_piecewise_cuda_graph": True}],
    )
    enable_autotuner: bool | None = Field(None, description="autotune kernel tactics at warm-up", examples=[False])
    enable_min_latency: bool | None = Field(None, description="min-latency kernel mode (Llama 4 only)", examples=[True])
    sampler_type: Sampler | None = Field(
        None, description=f"sampler implementation: {', '.join(SAMPLERS)}", examples=["TRTLLMSampler"]
    )
    moe_config: MoeOptions | None = Field(
        None,
        description="mixture-of-experts kernels and chunking",
        examples=[{"backend": "TRTLLM", "max_num_tokens": 4096}],
    )
    force_dynamic_quantization: bool | None = Field(
        None,
        description="quantize activations dynamically even where the checkpoint has static scales",
        examples=[True],
    )
    sparse_attention_config: SparseAttentionOptions | None = Field(
        None,
        description="sparse attention over the KV cache (RocketKV)",
        examples=[{"algorithm": "rocket", "prompt_budget": 1024}],
    )
    speculative_config: SpeculativeOptions | None = Field(
        None,
        description="speculative decoding: draft tokens verified in one target step",
        examples=[{"decoding_type": "NGram", "max_draft_len": 4, "max_matching_ngram_size": 2}],
    )
    gather_generation_logits: bool | None = Field(
        None, description="gather full-vocabulary generation logits every step", examples=[True]
    )


class TrtllmKvCache(EngineGroup):
    """Fields of ``KvCacheConfig``, passed as ``LLM(kv_cache_config=KvCacheConfig(...))``."""

    enable_block_reuse: bool | None = Field(
        None,
        description="reuse cached KV blocks of identical prompt prefixes; the tool sets false: the warm-up "
        "replays the measured prompts, so reuse would turn their prefill into cache hits",
        examples=[True],
    )
    enable_partial_reuse: bool | None = Field(
        None, description="reuse partially matching blocks (with reuse on)", examples=[False]
    )
    copy_on_partial_reuse: bool | None = Field(
        None, description="copy partially matched blocks that are in use", examples=[False]
    )
    free_gpu_memory_fraction: float | None = Field(
        None, ge=0, le=1, description="share of free GPU memory given to the KV cache", examples=[0.5]
    )
    max_tokens: int | None = Field(None, ge=1, description="cap on tokens the KV cache holds", examples=[65536])
    max_gpu_total_bytes: int | None = Field(
        None, ge=0, description="cap on KV cache GPU bytes (0: none)", examples=[8 * 1024**3]
    )
    max_attention_window: list[int] | None = Field(
        None, description="attention window per layer (repeated over layers): sliding-window KV", examples=[[4096]]
    )
    sink_token_length: int | None = Field(
        None, ge=0, description="tokens always kept in the attention window", examples=[4]
    )
    tokens_per_block: int | None = Field(None, ge=1, description="tokens per KV cache block (page size)", examples=[64])
    dtype: Literal["auto", "fp8"] | None = Field(
        None, description="KV cache precision: auto (the model's) or fp8", examples=["fp8"]
    )
    mamba_ssm_cache_dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = Field(
        None, description="precision of the Mamba SSM state cache (Mamba/hybrid models)", examples=["float16"]
    )
    host_cache_size: int | None = Field(
        None, ge=0, description="bytes of host memory for offloaded blocks", examples=[4 * 1024**3]
    )
    onboard_blocks: bool | None = Field(
        None, description="bring offloaded blocks back to the GPU for reuse", examples=[False]
    )
    secondary_offload_min_priority: int | None = Field(
        None, description="only blocks above this priority are offloaded to host", examples=[50]
    )
    use_uvm: bool | None = Field(None, description="allocate the KV cache in unified (managed) memory", examples=[True])

    @model_validator(mode="after")
    def _window(self) -> TrtllmKvCache:
        if self.max_attention_window is not None and (
            not self.max_attention_window or min(self.max_attention_window) < 1
        ):
            raise ValueError("max_attention_window must be a non-empty list of positive integers")
        return self


class TrtllmSampling(EngineGroup):
    """Keyword arguments of ``tensorrt_llm.SamplingParams``."""

    temperature: float | None = Field(
        None, ge=0, description="logit temperature; 0 is greedy (the tool's default)", examples=[0.8]
    )
    top_k: int | None = Field(None, ge=0, description="sample from the k most likely tokens (0: all)", examples=[50])
    top_p: float | None = Field(
        None, gt=0, le=1, description="nucleus sampling mass (0 is refused by the engine)", examples=[0.9]
    )
    min_p: float | None = Field(
        None, ge=0, le=1, description="drop tokens below min_p x the top probability", examples=[0.05]
    )
    top_p_min: float | None = Field(None, gt=0, le=1, description="lower bound of top-p decay", examples=[0.1])
    top_p_decay: float | None = Field(None, gt=0, le=1, description="top-p decay factor per step", examples=[0.9])
    top_p_reset_ids: int | None = Field(None, ge=0, description="token id that resets top-p decay", examples=[13])
    seed: int | None = Field(None, ge=0, description="random seed of sampling", examples=[1234])
    repetition_penalty: float | None = Field(
        None, gt=0, description="penalty on repeated tokens (1: none)", examples=[1.1]
    )
    presence_penalty: float | None = Field(
        None, description="penalty on tokens already present (0: none)", examples=[0.5]
    )
    frequency_penalty: float | None = Field(None, description="penalty by token frequency (0: none)", examples=[0.5])
    no_repeat_ngram_size: int | None = Field(None, ge=1, description="ban repeating n-grams of this size", examples=[3])
    n: int | None = Field(None, ge=1, description="sequences returned per prompt", examples=[2])
    best_of: int | None = Field(None, ge=1, description="sequences generated per prompt (>= n)", examples=[2])
    use_beam_search: bool | None = Field(None, description="beam search with width best_of (or n)", examples=[True])
    length_penalty: float | None = Field(None, description="beam search length penalty", examples=[0.6])
    early_stopping: int | None = Field(
        None, ge=0, description="beam search stops once beams finish (1: yes)", examples=[0]
    )
    beam_search_diversity_rate: float | None = Field(None, ge=0, description="diversity between beams", examples=[0.5])
    beam_width_array: list[int] | None = Field(
        None, description="beam width per step (variable beam width)", examples=[[2, 4]]
    )
    logprobs: int | None = Field(None, ge=0, description="log probabilities returned per output token", examples=[1])
    prompt_logprobs: int | None = Field(
        None, ge=0, description="log probabilities returned per prompt token", examples=[1]
    )
    return_context_logits: bool | None = Field(
        None, description="return full-vocabulary prompt logits", examples=[True]
    )
    return_generation_logits: bool | None = Field(
        None, description="return full-vocabulary output logits", examples=[True]
    )


def _greedy(sampling: dict[str, Any]) -> bool:
    """Whether these sampling arguments decode greedily (the engine's rule), without beam search."""
    temperature, top_p, top_k = sampling.get("temperature"), sampling.get("top_p"), sampling.get("top_k")
    return (temperature is None and top_p is None and top_k is None) or top_k == 1 or top_p == 0.0 or temperature == 0


class TrtllmOptions(EngineSection):
    backend: ClassVar[str] = "trtllm"
    snapshot_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "engine": ("llm", "llm.pytorch"),
        "kv_cache": ("kv_cache_config",),
        "sampling": ("sampling",),
    }
    load_groups: ClassVar[tuple[str, ...]] = ("engine", "kv_cache")
    set_elsewhere: ClassVar[dict[str, str]] = {
        "engine.model": "model",
        "engine.dtype": "dtype",
        "engine.kv_cache_config": "trtllm.kv_cache",
        "sampling.max_tokens": "workload.output_len",
        "sampling.min_tokens": "workload.output_len",
    }
    reserved: ClassVar[dict[str, str]] = {
        "engine.load_format": "dummy weights for random: presets, the checkpoint otherwise",
        "engine.skip_tokenizer_init": "on for random: presets, which have no tokenizer",
        "engine.return_perf_metrics": "on: the adapter reads each request's time to first token",
        "sampling.return_perf_metrics": "on: the adapter reads each request's time to first token",
        "sampling.ignore_eos": "on: every prompt generates exactly workload.output_len tokens",
        "sampling.end_id": "the model's EOS id for random: presets (no tokenizer), the tokenizer's otherwise",
        "sampling.detokenize": "off: the tool works on token ids",
    }

    engine: TrtllmEngine = TrtllmEngine()
    kv_cache: TrtllmKvCache = TrtllmKvCache()
    sampling: TrtllmSampling = TrtllmSampling()

    def completions_per_prompt(self) -> int:
        return int(self.sampling.n or 1)

    def check(self, experiment: Any) -> None:
        engine = self.arguments("engine")
        sampling = {"temperature": 0.0, **self.arguments("sampling")}  # the adapter decodes greedily by default
        workload = experiment.workload
        n = sampling.get("n", 1)
        best_of = sampling.get("best_of") or n
        if best_of < n:
            raise ValueError(f"trtllm.sampling.best_of ({best_of}) must be >= trtllm.sampling.n ({n})")
        beam = bool(sampling.get("use_beam_search"))
        if best_of > 1 and not beam and _greedy(sampling):
            raise ValueError(
                f"trtllm.sampling.{'best_of' if 'best_of' in sampling else 'n'}: several sequences per "
                "prompt need sampling (set trtllm.sampling.temperature > 0, top_p or top_k > 1) or "
                "trtllm.sampling.use_beam_search: true"
            )
        max_beam = engine.get("max_beam_width", 1)
        if beam and best_of > max_beam:
            raise ValueError(
                f"trtllm.sampling.use_beam_search: beam width {best_of} (best_of or n) exceeds "
                f"trtllm.engine.max_beam_width ({max_beam}); set max_beam_width >= {best_of}"
            )
        beam_only = [
            name
            for name in ("length_penalty", "early_stopping", "beam_search_diversity_rate", "beam_width_array")
            if name in sampling
        ]
        if beam_only and not beam:
            raise ValueError(
                f"trtllm.sampling.{beam_only[0]}: applies to beam search only; "
                "set trtllm.sampling.use_beam_search: true"
            )
        widths = sampling.get("beam_width_array")
        if widths is not None and (not widths or min(widths) < 1 or max(widths) > max_beam):
            raise ValueError(
                f"trtllm.sampling.beam_width_array: widths must be 1..trtllm.engine.max_beam_width ({max_beam})"
            )
        needed = workload.input_len + workload.output_len
        if "max_seq_len" in engine and engine["max_seq_len"] < needed:
            raise ValueError(
                f"trtllm.engine.max_seq_len ({engine['max_seq_len']}) must be >= workload.input_len + "
                f"workload.output_len ({needed})"
            )
        if "max_input_len" in engine and engine["max_input_len"] < workload.input_len:
            raise ValueError(
                f"trtllm.engine.max_input_len ({engine['max_input_len']}) must be >= "
                f"workload.input_len ({workload.input_len})"
            )
        if (
            not engine.get("enable_chunked_prefill")
            and "max_num_tokens" in engine
            and engine["max_num_tokens"] < workload.input_len
        ):
            raise ValueError(
                f"trtllm.engine.max_num_tokens ({engine['max_num_tokens']}) is below workload.input_len "
                f"({workload.input_len}): a prompt must fit one iteration unless "
                "trtllm.engine.enable_chunked_prefill is true"
            )
        scheduler = engine.get("scheduler_config") or {}
        if "context_chunking_policy" in scheduler and not engine.get("enable_chunked_prefill"):
            raise ValueError(
                "trtllm.engine.scheduler_config.context_chunking_policy: applies to chunked prefill "
                "only; set trtllm.engine.enable_chunked_prefill: true"
            )
        if engine.get("enable_lm_head_tp_in_adp") and not engine.get("enable_attention_dp"):
            raise ValueError(
                "trtllm.engine.enable_lm_head_tp_in_adp: applies under attention DP only; set "
                "trtllm.engine.enable_attention_dp: true"
            )
        if "attention_dp_config" in engine and not engine.get("enable_attention_dp"):
            raise ValueError(
                "trtllm.engine.attention_dp_config: applies under attention DP only; set "
                "trtllm.engine.enable_attention_dp: true"
            )
        kv_cache = self.arguments("kv_cache")
        reuse = kv_cache.get("enable_block_reuse", KV_CACHE_DEFAULTS["enable_block_reuse"])
        partial = [name for name in ("enable_partial_reuse", "copy_on_partial_reuse") if name in kv_cache]
        if partial and not reuse:
            raise ValueError(
                f"trtllm.kv_cache.{partial[0]}: applies with block reuse only; set "
                "trtllm.kv_cache.enable_block_reuse: true"
            )
