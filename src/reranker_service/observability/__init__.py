"""Metrics, logs and GPU polling. May read the engine's data types; knows nothing about HTTP."""
