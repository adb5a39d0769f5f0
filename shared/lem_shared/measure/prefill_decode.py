"""Prefill and decode, apart (PREC-01): time, energy, tokens, tokens/s, J/token and hardware efficiency per phase.

Energy per phase cannot come from ~100 ms power readings inside one ``generate`` call, so it is measured by
difference: besides the full workload's window, a run with ``measurement.phase_split`` measures a prefill-only
window (the same prompts and batches, one new token each) of its own. Per prompt,

    prefill = prefill-only window / its prompts          (prompt processing and the first token)
    decode  = full window / its prompts - prefill        (the other output_len - 1 tokens)

for time and for energy. A window's energy has the uncertainty u(E) = max(|E_counter - E_integral|,
mean power x counter update interval): the disagreement of the two independent estimates, and at least one
counter step at the window's edges. The decode figure carries both windows' uncertainties:
u(decode) = sqrt(u(full)^2 + u(prefill)^2), per prompt. The phases add up to the full window by construction;
what the method assumes is that a prompt's prefill costs the same inside the full workload as alone.

FLOPs per phase are the analytic ones of ``lem_shared.measure.flops`` (prefill: the prompt's forward; decode: the
output_len - 1 steps after it), so each phase also gets achieved TFLOP/s, MFU and J per TFLOP, and decode the
memory bandwidth it achieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lem_shared.measure import flops as flops_model


@dataclass(frozen=True)
class WindowFigures:
    """One measured window: its energy (None without NVML) and uncertainty, length, and the prompts done in it."""

    energy_j: float | None
    energy_uncertainty_j: float | None
    duration_s: float
    prompts: int


def energy_uncertainty(
    counter_j: float | None,
    integral_j: float | None,
    mean_power_w: float | None,
    duration_s: float,
    counter_updates: int,
) -> float | None:
    """u(E) of a window: the counter-vs-integral disagreement, and at least one counter step's energy."""
    if counter_j is None:
        return None
    disagreement = abs(counter_j - integral_j) if integral_j is not None else 0.0
    step = (mean_power_w or 0.0) * duration_s / counter_updates if counter_updates else 0.0
    return max(disagreement, step)


def _per_token(value: float | None, tokens: int) -> float | None:
    return value / tokens if value is not None and tokens > 0 else None


def split(
    full: WindowFigures,
    prefill: WindowFigures,
    *,
    input_len: int,
    output_len: int,
    batch_size: int,
    model_shape: dict[str, Any] | None = None,
    gpu_name: str | None = None,
    dtype: str | None = None,
    dtype_bytes: int = 2,
) -> dict[str, Any]:
    """Per-prompt time, energy (with uncertainty), tokens, tokens/s and J/token of each phase, and the whole
    full window's energy split into the two; with ``model_shape``, FLOPs and efficiency per phase."""
    t_full, t_prefill = full.duration_s / full.prompts, prefill.duration_s / prefill.prompts
    t_decode = t_full - t_prefill
    e_full = full.energy_j / full.prompts if full.energy_j is not None else None
    e_prefill = prefill.energy_j / prefill.prompts if prefill.energy_j is not None else None
    e_decode = e_full - e_prefill if e_full is not None and e_prefill is not None else None
    u_full = full.energy_uncertainty_j / full.prompts if full.energy_uncertainty_j is not None else None
    u_prefill = prefill.energy_uncertainty_j / prefill.prompts if prefill.energy_uncertainty_j is not None else None
    u_decode = math.hypot(u_full, u_prefill) if u_full is not None and u_prefill is not None else None
    decode_tokens = output_len - 1
    phases: dict[str, Any] = {
        "prefill": {
            "time_s": t_prefill,
            "energy_j": e_prefill,
            "energy_uncertainty_j": u_prefill,
            "tokens": input_len,
            "tokens_per_s": input_len / t_prefill if t_prefill > 0 else None,
            "j_per_token": _per_token(e_prefill, input_len),
        },
        "decode": {
            "time_s": t_decode,
            "energy_j": e_decode,
            "energy_uncertainty_j": u_decode,
            "tokens": decode_tokens,
            "tokens_per_s": decode_tokens / t_decode if t_decode > 0 and decode_tokens else None,
            "j_per_token": _per_token(e_decode, decode_tokens),
        },
    }
    problems = []
    if t_decode <= 0:
        problems.append(
            f"decode time {t_decode:.4g} s per prompt is not positive: the prefill-only window took "
            "as long per prompt as the full one (too few output tokens, or noise)"
        )
    if e_decode is not None and u_decode is not None and e_decode < -u_decode:
        problems.append("decode energy below zero beyond its uncertainty")
    if model_shape:
        batch = batch_size
        prefill_flops = flops_model.prefill_flops(model_shape, batch, input_len) / batch
        decode_flops = flops_model.decode_flops(model_shape, batch, input_len, output_len) / batch
        for name, work, seconds, energy in (
            ("prefill", prefill_flops, t_prefill, e_prefill),
            ("decode", decode_flops, t_decode, e_decode),
        ):
            phases[name]["flops"] = work
            phases[name].update(
                flops_model.efficiency(work, seconds, energy, gpu_name, dtype=dtype)
                if seconds > 0
                else {"mfu_reason": "no positive duration"}
            )
        decode_bytes = flops_model.decode_bytes(model_shape, batch, input_len, output_len, dtype_bytes)
        if t_decode > 0:
            phases["decode"]["memory"] = flops_model.bandwidth_efficiency(decode_bytes, t_decode * batch, gpu_name)
    return {
        "method": "difference: a prefill-only window (one new token per prompt) measured apart from the full "
        "workload's; decode = full - prefill, per prompt",
        "per_prompt": phases,
        "full": {"time_s": t_full, "energy_j": e_full, "energy_uncertainty_j": u_full},
        "window_energy_j": {
            "prefill": e_prefill * full.prompts if e_prefill is not None else None,
            "decode": e_decode * full.prompts if e_decode is not None else None,
            "full": full.energy_j,
        },
        "prefill_window": {
            "duration_s": prefill.duration_s,
            "prompts": prefill.prompts,
            "energy_j": prefill.energy_j,
            "energy_uncertainty_j": prefill.energy_uncertainty_j,
        },
        "problems": problems,
    }
