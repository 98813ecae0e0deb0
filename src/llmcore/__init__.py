"""LLM-Core."""
