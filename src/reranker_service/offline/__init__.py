"""Offline work: the batch and eval commands."""
