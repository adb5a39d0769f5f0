"""LLenergyMeasure worker for vLLM: the common runtime plus the vLLM adapter."""
