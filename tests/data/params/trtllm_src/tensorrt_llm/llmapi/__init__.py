"""Fixture: tensorrt_llm/llmapi package."""
