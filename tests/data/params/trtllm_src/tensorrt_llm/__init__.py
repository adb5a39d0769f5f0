"""Fixture: the tensorrt_llm package marker."""
