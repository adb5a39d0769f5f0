"""Fixture: the vllm package marker."""
