"""Counted FLOPs of one ``generate``: the prefill forward and the decode steps, split, to set beside the analytic ones.

``count_flops`` runs ``model.generate`` once (greedy, forced length) with every operator dispatched through
``torch.utils.flop_counter.FlopCounterMode``, and a forward pre-hook and hook on the model that read the running
total around each forward: the first forward is the prefill, the rest are the decode steps. It must run outside any
measurement window (the counting mode slows every operator down); the caller owns that.

Two counters were weighed:

* ``FlopCounterMode`` (chosen, ``method="flop_counter"``) sees every aten operator through a dispatch mode, on any
  device, and applies an exact formula per operator from its shapes: ``mm``/``addmm``/``bmm``/``baddbmm`` (every
  linear layer, the LM head) and the fused scaled-dot-product-attention kernels. Two gaps are closed here with
  ``custom_mapping``: the CPU flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no formula in torch
  (its attention would count 0 on CPU), and torch's SDPA formula ignores ``is_causal`` (it counts the full square).
  The formula below reads the operator's ``is_causal`` argument: when set, it counts the (query, key) pairs the
  causal mask keeps, which is the work flash-style kernels do (they skip fully masked tiles); without it, the full
  square (a dense mask is computed in full). It also counts GQA by query heads whatever the torch version. torch's
  own convention (full square always) is returned beside it as ``*_flops_full_attention``.
* ``torch.profiler.profile(with_flops=True)`` (``method="profiler"``, kept for comparison) estimates FLOPs only for
  a fixed list of operators (matmuls, convolutions, elementwise ``mul``/``add``): fused SDPA kernels count 0, so the
  attention over the KV cache, the part the analytic formula adds over ``2 * params * tokens``, is missing, and the
  elementwise ops it does count are the ones the analytic formula leaves out. It needs the profiler (CUPTI on CUDA)
  and splits the phases by ``record_function`` ranges opened from the same hooks.

Only torch is imported at module level; transformers is only used through the model passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

# Position of ``is_causal`` among each fused SDPA operator's positional arguments (see native_functions.yaml).
_IS_CAUSAL_POSITION: dict[str, int] = {
    "_scaled_dot_product_flash_attention": 4,
    "_scaled_dot_product_flash_attention_for_cpu": 4,
    "_scaled_dot_product_efficient_attention": 6,
    "_scaled_dot_product_cudnn_attention": 6,
}


def attention_pairs(q_len: int, k_len: int, is_causal: bool) -> int:
    """(query, key) pairs an SDPA kernel computes: all of them, or under torch's causal mask (query i sees 0..i)."""
    if not is_causal:
        return q_len * k_len
    # torch's is_causal is the top-left aligned lower triangle: query i sees keys 0..i.
    full_rows = min(q_len, k_len)
    return full_rows * (full_rows + 1) // 2 + max(q_len - k_len, 0) * k_len


def _sdpa_formula(packet: Any, position: int, full_square: dict[str, int] | None):
    def formula(query, key, value, *args, out_shape=None, **kwargs) -> int:
        b, heads, q_len, head_dim = query  # GQA: key and value may have fewer heads; every query head counts
        k_len, v_dim = key[2], value[3]
        is_causal = bool(args[position - 3]) if len(args) > position - 3 else bool(kwargs.get("is_causal", False))
        per_pair = b * heads * (2 * head_dim + 2 * v_dim)  # Q K^T: 2*dh per pair and head; A V: 2*dv
        if full_square is not None:
            full_square[str(packet)] += per_pair * q_len * k_len
        return per_pair * attention_pairs(q_len, k_len, is_causal)

    return formula


def sdpa_mapping(full_square: dict[str, int] | None = None) -> dict[Any, Any]:
    """``custom_mapping`` for ``FlopCounterMode``: every fused SDPA operator this torch has, GQA and CPU included.

    The formulas return the causal-aware count; ``full_square``, when given, accumulates by operator name what
    torch's own formula would count (every (query, key) pair).
    """
    mapping = {}
    for name, position in _IS_CAUSAL_POSITION.items():
        packet = getattr(aten, name, None)
        if packet is not None:
            mapping[packet] = _sdpa_formula(packet, position, full_square)
    return mapping


def _generate(model: Any, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.generation_config.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0 if pad is None else pad,
    )


class _PhaseTotals:
    """Reads a running FLOP total at the start and end of every forward of the model."""

    def __init__(self, read_total: Callable[[], dict[str, int]]) -> None:
        self.read_total = read_total
        self.per_forward: list[dict[str, Any]] = []
        self._start: dict[str, Any] = {}

    def pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._start = dict(total=self.read_total(), tokens=None if ids is None else tuple(ids.shape))

    def post(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        end = self.read_total()
        self.per_forward.append(
            dict(input_shape=self._start["tokens"], by_op={k: end[k] - self._start["total"].get(k, 0) for k in end})
        )


def _split(per_forward: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    prefill: dict[str, int] = dict(per_forward[0]["by_op"]) if per_forward else {}
    decode: dict[str, int] = defaultdict(int)
    for call in per_forward[1:]:
        for op, flops in call["by_op"].items():
            decode[op] += flops
    return {k: v for k, v in prefill.items() if v}, {k: v for k, v in decode.items() if v}


def _with_hooks(model: Any, totals: _PhaseTotals, run):
    handles = [
        model.register_forward_pre_hook(totals.pre, with_kwargs=True),
        model.register_forward_hook(totals.post, with_kwargs=True),
    ]
    try:
        return run()
    finally:
        for handle in handles:
            handle.remove()


def _count_flop_counter(model: Any, input_ids: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    full_square: dict[str, int] = defaultdict(int)
    counter = FlopCounterMode(display=False, custom_mapping=sdpa_mapping(full_square))
    tag = " [full square]"

    def read_total() -> dict[str, int]:
        counts = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
        return counts | {op + tag: v for op, v in full_square.items()}

    totals = _PhaseTotals(read_total)
    with torch.inference_mode(), counter:
        sequences = _with_hooks(model, totals, lambda: _generate(model, input_ids, new_tokens))
    prefill_ops, decode_ops = _split(totals.per_forward)

    def phase(ops: dict[str, int], full: bool) -> int:
        counted = sum(v for op, v in ops.items() if not op.endswith(tag))
        if full:  # swap each SDPA operator's causal-aware count for its full square
            counted += sum(v - ops.get(op.removesuffix(tag), 0) for op, v in ops.items() if op.endswith(tag))
        return counted

    return dict(
        method="flop_counter",
        prefill_flops=phase(prefill_ops, False),
        decode_flops=phase(decode_ops, False),
        prefill_flops_full_attention=phase(prefill_ops, True),
        decode_flops_full_attention=phase(decode_ops, True),
        prefill_by_op=prefill_ops,
        decode_by_op=decode_ops,
        forward_calls=len(totals.per_forward),
        generated_tokens=int(sequences.shape[1] - input_ids.shape[1]),
    )


def _count_profiler(model: Any, input_ids: torch.Tensor, new_tokens: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, record_function

    ranges: list[Any] = []

    class Ranges(_PhaseTotals):
        def pre(self, module, args, kwargs):
            name = "lem_prefill" if not ranges else "lem_decode"
            ranges.append(record_function(name))
            ranges[-1].__enter__()
            super().pre(module, args, kwargs)

        def post(self, module, args, kwargs, output):
            super().post(module, args, kwargs, output)
            ranges[-1].__exit__(None, None, None)

    totals = Ranges(dict)
    with (
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof,
    ):
        sequences = _with_hooks(model, totals, lambda: _generate(model, input_ids, new_tokens))
    events = list(prof.events())
    windows = [
        (e.name, e.time_range.start, e.time_range.end) for e in events if e.name in ("lem_prefill", "lem_decode")
    ]
    by_phase: dict[str, dict[str, int]] = {"lem_prefill": defaultdict(int), "lem_decode": defaultdict(int)}
    for event in events:
        flops = int(getattr(event, "flops", 0) or 0)
        if not flops:
            continue
        for name, start, end in windows:
            if start <= event.time_range.start <= end:
                by_phase[name][event.name] += flops
                break
    prefill_ops, decode_ops = dict(by_phase["lem_prefill"]), dict(by_phase["lem_decode"])
    return dict(
        method="profiler",
        prefill_flops=sum(prefill_ops.values()),
        decode_flops=sum(decode_ops.values()),
        prefill_by_op=prefill_ops,
        decode_by_op=decode_ops,
        forward_calls=len(totals.per_forward),
        generated_tokens=int(sequences.shape[1] - input_ids.shape[1]),
    )


def count_flops(model: Any, input_ids: torch.Tensor, new_tokens: int, *, method: str = "flop_counter") -> dict:
    """Counted FLOPs of ``model.generate(input_ids, max_new_tokens=min_new_tokens=new_tokens)``, greedy.

    Returns ``prefill_flops`` (the first forward), ``decode_flops`` (the other forwards), ``method``, the FLOPs by
    operator per phase, the number of forwards and of generated tokens; with ``method="flop_counter"`` also
    ``*_flops_full_attention`` (SDPA counted as the full square, torch's convention).
    """
    if method == "flop_counter":
        return _count_flop_counter(model, input_ids, new_tokens)
    if method == "profiler":
        return _count_profiler(model, input_ids, new_tokens)
    raise ValueError(f"method must be 'flop_counter' or 'profiler', not {method!r}")
