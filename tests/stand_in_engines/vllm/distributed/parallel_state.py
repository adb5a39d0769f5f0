"""STAND-IN, not vLLM: imitates ``vllm.distributed.parallel_state.cleanup_dist_env_and_memory``, which tears down
vLLM's distributed state and empties the CUDA cache; here it only records that it was called."""

from __future__ import annotations

from _stand_in import Call

from vllm import CALLS


def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    CALLS.append(Call("cleanup_dist_env_and_memory", {"shutdown_ray": shutdown_ray}))
