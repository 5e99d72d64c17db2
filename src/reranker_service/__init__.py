"""Qwen3-Reranker as an observable HTTP service."""

__version__ = "0.1.0"
