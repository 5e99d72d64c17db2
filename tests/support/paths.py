"""Where the checkout and the tests' vendored data are, for every test and helper."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The checkout's root."""
DATA = ROOT / "tests" / "data"
"""What the suite vendors (schemas, CRDs): no test reads beside the checkout."""
