"""Logging (and, later, metrics and GPU polling)."""
