"""LLenergyMeasure worker for PyTorch / HF transformers: the common runtime plus the transformers adapter."""
