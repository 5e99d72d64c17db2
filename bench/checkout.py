"""The checkout's root on the import path, so that a benchmark reuses the tests' helpers
(``tests.support``: the model-card oracle, a Redis server, uvicorn on a thread) rather than
keeping copies of them."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_tests_support() -> None:
    """Make ``tests.support`` importable from a script run as ``python bench/<name>.py``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
