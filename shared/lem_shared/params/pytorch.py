"""The pytorch section of an experiment: transformers model loading, ``torch.compile`` and ``generate``.

- ``loading``: keywords of ``from_pretrained`` (hub or local models). ``random:*`` models are built from a
  config with ``from_config``, which takes only ``attn_implementation``, ``experts_implementation`` and
  ``allow_all_kernels``; any other loading parameter is refused for them rather than dropped.
- ``compile``: when given (even ``{}``), the model's forward is wrapped in ``torch.compile`` with these keywords.
- ``generation``: keywords of ``generate`` (``GenerationConfig`` attributes and ``generate``'s own). The workload
  forces the output length (``max_new_tokens = min_new_tokens = workload.output_len``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from lem_shared.params.engine import EngineGroup, EngineSection

ATTENTION = (
    "eager",
    "sdpa",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
    "flex_attention",
    "paged|eager",
    "paged|sdpa",
    "paged|flash_attention_2",
    "paged|flex_attention",
)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda")
CACHES = ("dynamic", "offloaded", "quantized", "static", "offloaded_static")
QUANT_METHODS = (
    "bitsandbytes",
    "gptq",
    "awq",
    "aqlm",
    "quanto",
    "eetq",
    "hqq",
    "compressed-tensors",
    "fbgemm_fp8",
    "torchao",
    "bitnet",
    "vptq",
    "spqr",
    "fp8",
    "higgs",
    "quark",
    "mxfp4",
    "fp_quant",
    "auto-round",
)
# Loading parameters from_config takes (random:* models are built from a config, not loaded).
FROM_CONFIG = {"attn_implementation", "experts_implementation", "allow_all_kernels"}
# generate parameters that only an assistant model (assisted decoding) reads.
ASSISTED = (
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "assistant_lookbehind",
    "target_lookbehind",
    "assistant_ensemble_weight",
    "assistant_early_exit",
)
# Decoding methods transformers 5 runs from a hub recipe (transformers-community/...), which needs
# generate(trust_remote_code=True) and the network: parameter -> recipe.
HUB_RECIPES = {
    "num_beam_groups": "group-beam-search",
    "diversity_penalty": "group-beam-search",
    "force_words_ids": "constrained-beam-search",
    "dola_layers": "dola",
    "penalty_alpha": "contrastive-search",
}
# Sampling parameters that generate ignores unless do_sample is true.
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")


class PytorchLoading(EngineGroup):
    """Keywords of ``from_pretrained``."""

    attn_implementation: str | None = Field(
        None,
        description=f"attention kernels: {', '.join(ATTENTION)}, or a hub kernel repo (org/name)",
        examples=["eager"],
    )
    experts_implementation: Literal["eager", "grouped_mm", "batched_mm"] | None = Field(
        None, description="mixture-of-experts kernels (MoE models only)", examples=["grouped_mm"]
    )
    device_map: str | dict[str, int | str] | None = Field(
        None,
        description=f"placement over devices: {', '.join(DEVICE_MAPS)}, cuda:N, or {{module: device}}",
        examples=["auto"],
    )
    max_memory: dict[str, str | int] | None = Field(
        None,
        description="per-device memory cap for device_map (e.g. {0: 40GiB, cpu: 100GiB}): the rest offloads",
        examples=[{"0": "20GiB", "cpu": "64GiB"}],
    )
    offload_folder: str | None = Field(
        None, description="folder for weights device_map offloads to disk", examples=["/tmp/offload"]
    )
    offload_buffers: bool | None = Field(None, description="offload buffers with the weights", examples=[True])
    quantization_config: dict[str, Any] | None = Field(
        None,
        description="weight quantization, e.g. {quant_method: bitsandbytes, load_in_4bit: true}; "
        f"quant_method one of {', '.join(QUANT_METHODS)}",
        examples=[{"quant_method": "bitsandbytes", "load_in_8bit": True}],
    )
    use_kernels: bool | None = Field(None, description="replace layers with hub-optimised kernels", examples=[True])
    kernel_config: dict[str, Any] | None = Field(
        None, description="which hub kernels replace which layers", examples=[{"kernel_mapping": {}}]
    )
    allow_all_kernels: bool | None = Field(None, description="allow hub kernels without an allow-list", examples=[True])
    fusion_config: dict[str, Any] | None = Field(None, description="module fusions applied at load", examples=[{}])
    revision: str | None = Field(
        None, description="hub revision (branch, tag or commit) of the weights", examples=["main"]
    )
    trust_remote_code: bool | None = Field(None, description="run the model repo's own modelling code", examples=[True])

    @field_validator("attn_implementation")
    @classmethod
    def _attention(cls, value: str | None) -> str | None:
        if value is not None and value not in ATTENTION and "/" not in value:
            raise ValueError(f"must be one of {', '.join(ATTENTION)}, or a hub kernel repo org/name")
        return value

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in DEVICE_MAPS and not value.startswith("cuda:"):
            raise ValueError(f"must be one of {', '.join(DEVICE_MAPS)}, cuda:N or a mapping of modules to devices")
        return value

    @field_validator("quantization_config")
    @classmethod
    def _quant_method(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("quant_method") not in QUANT_METHODS:
            raise ValueError(f"needs quant_method, one of {', '.join(QUANT_METHODS)}")
        return value


class PytorchCompile(EngineGroup):
    """Keywords of ``torch.compile`` around the model's forward."""

    backend: str | None = Field(
        None, description="compiler backend: inductor (default), eager, aot_eager, cudagraphs", examples=["eager"]
    )
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = Field(
        None,
        description="inductor's trade-off of compile time against speed; reduce-overhead uses CUDA graphs",
        examples=["reduce-overhead"],
    )
    fullgraph: bool | None = Field(None, description="one graph or an error (no graph breaks)", examples=[True])
    dynamic: bool | None = Field(
        None, description="dynamic-shape tracing: True always, False never, None on change", examples=[False]
    )
    options: dict[str, Any] | None = Field(
        None, description="inductor options, e.g. {triton.cudagraphs: true}", examples=[{"epilogue_fusion": True}]
    )
    recompile_limit: int | None = Field(
        None, ge=1, description="recompilations per frame before falling back to eager", examples=[16]
    )


class PytorchGeneration(EngineGroup):
    """Keywords of ``generate``."""

    do_sample: bool | None = Field(None, description="sample instead of greedy decoding", examples=[True])
    temperature: float | None = Field(None, gt=0, description="softmax temperature (with do_sample)", examples=[0.7])
    top_k: int | None = Field(None, ge=0, description="keep the k most likely tokens (0: off)", examples=[50])
    top_p: float | None = Field(
        None, gt=0, le=1, description="nucleus sampling: sorts the vocabulary's logits", examples=[0.9]
    )
    min_p: float | None = Field(
        None, ge=0, le=1, description="drop tokens below min_p x the top probability", examples=[0.05]
    )
    typical_p: float | None = Field(None, gt=0, le=1, description="locally typical sampling mass", examples=[0.9])
    epsilon_cutoff: float | None = Field(
        None, ge=0, lt=1, description="drop tokens below this probability", examples=[0.0003]
    )
    eta_cutoff: float | None = Field(None, ge=0, lt=1, description="entropy-dependent cutoff", examples=[0.0003])
    top_h: float | None = Field(None, gt=0, le=1, description="top-H (entropy) truncation", examples=[0.4])
    repetition_penalty: float | None = Field(
        None, gt=0, description="penalise tokens already generated", examples=[1.2]
    )
    no_repeat_ngram_size: int | None = Field(
        None, ge=0, description="forbid repeating n-grams of this size", examples=[3]
    )
    num_beams: int | None = Field(
        None, ge=1, description="beam search width: that many sequences per prompt", examples=[4]
    )
    num_beam_groups: int | None = Field(
        None, ge=1, description="diverse beam search groups (divides num_beams)", examples=[2]
    )
    diversity_penalty: float | None = Field(
        None, ge=0, description="diverse beam search: penalty between groups", examples=[0.5]
    )
    early_stopping: bool | Literal["never"] | None = Field(
        None, description="beam search stop rule: true, false (heuristic) or never", examples=[True]
    )
    num_return_sequences: int | None = Field(None, ge=1, description="completions per prompt", examples=[2])
    force_words_ids: list[list[int]] | None = Field(
        None, description="constrained beam search: token ids that must appear", examples=[[[100, 101]]]
    )
    use_cache: bool | None = Field(
        None, description="keep the KV cache (false: recompute every step)", examples=[False]
    )
    cache_implementation: Literal["dynamic", "offloaded", "quantized", "static", "offloaded_static"] | None = Field(
        None,
        description="KV cache: dynamic grows; static preallocates (on CUDA transformers compiles the decoding "
        "step; the first call of each batch shape compiles, in warm-up); offloaded keeps it in CPU memory; "
        "quantized stores it in low precision",
        examples=["static"],
    )
    max_cache_len: int | None = Field(
        None, ge=1, description="static cache length (default: prompt + new tokens)", examples=[4096]
    )
    cache_config: dict[str, Any] | None = Field(
        None,
        description="options of the cache, e.g. {nbits: 4} for quantized",
        examples=[{"nbits": 4, "backend": "quanto"}],
    )
    compile_config: dict[str, Any] | None = Field(
        None,
        description="how generate compiles the decoding step with a static cache (CompileConfig fields)",
        examples=[{"fullgraph": False, "mode": "max-autotune"}],
    )
    disable_compile: bool | None = Field(
        None, description="do not compile the decoding step (static cache)", examples=[True]
    )
    prefill_chunk_size: int | None = Field(
        None, ge=1, description="prefill the prompt in chunks of this many tokens", examples=[256]
    )
    prompt_lookup_num_tokens: int | None = Field(
        None, ge=1, description="prompt-lookup decoding: candidate tokens copied from the prompt", examples=[10]
    )
    max_matching_ngram_size: int | None = Field(
        None, ge=1, description="prompt lookup: longest n-gram matched", examples=[2]
    )
    assistant_model: str | None = Field(
        None,
        description="assisted decoding: the draft model (a random:* preset of "
        "the same vocabulary, a hub id or a local folder)",
        examples=["random:llama-tiny"],
    )
    num_assistant_tokens: int | None = Field(
        None, ge=1, description="assisted decoding: draft tokens per step", examples=[5]
    )
    num_assistant_tokens_schedule: Literal["heuristic", "heuristic_transient", "constant"] | None = Field(
        None, description="assisted decoding: how the draft length adapts", examples=["constant"]
    )
    assistant_confidence_threshold: float | None = Field(
        None, ge=0, le=1, description="assisted decoding: stop drafting below this confidence", examples=[0.3]
    )
    assistant_lookbehind: int | None = Field(
        None, ge=1, description="universal assisted decoding: draft tokens re-aligned", examples=[10]
    )
    target_lookbehind: int | None = Field(
        None, ge=1, description="universal assisted decoding: target tokens re-aligned", examples=[10]
    )
    assistant_early_exit: int | None = Field(
        None, ge=1, description="self-speculative decoding: exit layer of the draft", examples=[4]
    )
    assistant_ensemble_weight: float | None = Field(
        None, ge=0, le=1, description="assisted decoding: static ensemble verification weight", examples=[0.5]
    )
    custom_generate: str | None = Field(
        None,
        description="a hub repository's decoding loop instead of generate's (runs its code)",
        examples=["transformers-community/custom_generate_example"],
    )
    dola_layers: Literal["low", "high"] | list[int] | None = Field(
        None, description="DoLa decoding: contrast with early layers", examples=["high"]
    )
    penalty_alpha: float | None = Field(
        None, ge=0, description="contrastive search degeneration penalty", examples=[0.6]
    )
    guidance_scale: float | None = Field(
        None, ge=0, description="classifier-free guidance (doubles the batch)", examples=[1.5]
    )
    output_scores: bool | None = Field(None, description="keep processed logits of every step", examples=[True])
    output_logits: bool | None = Field(None, description="keep raw logits of every step", examples=[True])
    output_attentions: bool | None = Field(
        None, description="return attention weights (needs eager attention)", examples=[True]
    )
    output_hidden_states: bool | None = Field(None, description="return every layer's hidden states", examples=[True])
    return_dict_in_generate: bool | None = Field(
        None, description="return a ModelOutput (needed for output_*)", examples=[True]
    )
    watermarking_config: dict[str, Any] | None = Field(
        None, description="watermark each step's logits", examples=[{"greenlist_ratio": 0.25}]
    )
    speculation_type: str | None = Field(None, description="built-in speculative decoding kind", examples=["mtp"])
    trust_remote_code: bool | None = Field(
        None,
        description="allow the hub decoding recipes transformers 5 moved out (group and constrained beam "
        "search, DoLa, contrastive search); needs the network",
        examples=[True],
    )
    use_mtp: bool | None = Field(
        None, description="multi-token prediction heads (models that have them)", examples=[True]
    )


class PytorchOptions(EngineSection):
    """Options only the pytorch (transformers) backend reads."""

    backend: ClassVar[str] = "pytorch"
    snapshot_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "loading": ("loading",),
        "compile": ("compile",),
        "generation": ("generation",),
    }
    load_groups: ClassVar[tuple[str, ...]] = ("loading", "compile")
    set_elsewhere: ClassVar[dict[str, str]] = {
        "loading.dtype": "dtype",
        "loading.torch_dtype": "dtype",
        "generation.max_new_tokens": "workload.output_len",
        "generation.min_new_tokens": "workload.output_len",
    }
    reserved: ClassVar[dict[str, str]] = {
        "loading.tp_plan": "tensor parallelism needs one process per GPU under torchrun; a worker is one process",
        "loading.tp_size": "tensor parallelism needs one process per GPU under torchrun; a worker is one process",
        "loading.distributed_config": "tensor/expert parallelism across processes (torchrun); a worker is one process",
        "loading.device_mesh": "a torch DeviceMesh built under torchrun; a worker is one process",
        "generation.continuous_batching_config": "read by generate_batch (continuous batching), not by generate",
        "generation.constraints": "Constraint objects cannot be written in a config; force_words_ids is their form",
        "generation.logits_processor": "Python objects cannot be written in a config",
        "generation.stopping_criteria": "Python objects cannot be written in a config",
        "generation.prefix_allowed_tokens_fn": "a Python function cannot be written in a config",
        "generation.generation_config": "built by generate from the parameters given here",
        "generation.low_memory": "transformers 5 refuses it (beam search was rewritten without it)",
        "generation.streamer": "the adapter's own streamer times the first token",
        "generation.max_length": "the workload forces the output length (max_new_tokens)",
        "generation.min_length": "the workload forces the output length (min_new_tokens)",
        "generation.max_time": "would end a run before its forced output length",
        "generation.stop_strings": "would end a run before its forced output length",
        "generation.eos_token_id": "the workload forces the output length, so no token ends a sequence",
        "generation.pad_token_id": "set from the model's config",
        "generation.input_ids": "the workload's prompts",
    }

    loading: PytorchLoading = PytorchLoading()
    compile: PytorchCompile | None = Field(None, description="wrap the model's forward in torch.compile (even {})")
    generation: PytorchGeneration = PytorchGeneration()

    def _arguments(self, group: str) -> dict[str, Any]:
        if group == "compile" and self.compile is None:
            return {}
        return super()._arguments(group)

    def completions_per_prompt(self) -> int:
        return int(self.generation.num_return_sequences or 1)

    def check(self, experiment: Any) -> None:
        loading = set(self.arguments("loading")) - FROM_CONFIG
        if experiment.model.startswith("random:") and loading:
            raise ValueError(
                f"pytorch.loading.{sorted(loading)[0]}: applies to hub or local models "
                f"(from_pretrained); {experiment.model} is built from a config, which takes only "
                f"{', '.join(sorted(FROM_CONFIG))}"
            )
        if self.compile is None and any(key.startswith("compile.") for key in self.extra):
            raise ValueError("pytorch.extra: compile parameters need pytorch.compile set (e.g. compile: {})")
        generation = self.arguments("generation")
        if not generation.get("do_sample"):
            ignored = [
                name
                for name in SAMPLING
                if name in generation and not (name == "top_k" and "penalty_alpha" in generation)
            ]  # contrastive search's top_k
            if ignored:
                raise ValueError(
                    f"pytorch.generation.{ignored[0]}: ignored by greedy decoding; "
                    "set pytorch.generation.do_sample: true, or remove it"
                )
        drafting = [name for name in ASSISTED if name in generation]
        if drafting and "assistant_model" not in generation and drafting != ["assistant_early_exit"]:
            name = next(n for n in drafting if n != "assistant_early_exit")
            raise ValueError(
                f"pytorch.generation.{name}: read only in assisted decoding; set pytorch.generation.assistant_model"
            )
        single = [
            name
            for name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")
            if name in generation
        ]
        if single and experiment.batch_size > 1:
            raise ValueError(
                f"pytorch.generation.{single[0]}: assisted decoding runs one prompt at a time in "
                f"transformers; set batch_size: 1 (got {experiment.batch_size})"
            )
        recipe = next((name for name in HUB_RECIPES if name in generation), None)
        if recipe and not generation.get("trust_remote_code"):
            raise ValueError(
                f"pytorch.generation.{recipe}: transformers 5 runs this decoding method from the hub "
                f"recipe transformers-community/{HUB_RECIPES[recipe]}; set "
                "pytorch.generation.trust_remote_code: true (needs the network)"
            )
        beams = generation.get("num_beams", 1)
        groups = generation.get("num_beam_groups", 1)
        if beams % groups:
            raise ValueError(f"pytorch.generation.num_beam_groups: must divide num_beams ({beams}); got {groups}")
        if "diversity_penalty" in generation and groups < 2:
            raise ValueError("pytorch.generation.diversity_penalty: needs num_beam_groups >= 2")
        if "force_words_ids" in generation and beams < 2:
            raise ValueError("pytorch.generation.force_words_ids: constrained decoding needs num_beams >= 2")
        if generation.get("cache_implementation") and generation.get("use_cache") is False:
            raise ValueError("pytorch.generation.cache_implementation: needs use_cache (it is false)")
