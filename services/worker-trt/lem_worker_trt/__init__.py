"""LLenergyMeasure worker for TensorRT-LLM: the common runtime plus the TensorRT-LLM LLM-API adapter."""
