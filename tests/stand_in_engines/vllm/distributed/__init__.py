"""STAND-IN, not vLLM: imitates the ``vllm.distributed`` package, only for ``parallel_state`` below."""
