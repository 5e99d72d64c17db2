"""``python -m tests.support.drill_service ARGS``: the service exactly as ``python -m
reranker_service ARGS`` runs it, except that its model sits behind the fault seams of
``tests.support.faulty_runners``, so that the alerting drill can set off a slow pass or a
failing one from outside with a word in a document. The seam is installed where the entry
point loads the model; nothing else changes.
"""

from __future__ import annotations

import sys

from reranker_service import __main__ as entry_point
from reranker_service.engine import loading
from reranker_service.engine.runner.protocol import ServedModel
from tests.support.faulty_runners import OverflowsOnAWord, SlowOnAWord

SLOW_PASS_SECONDS = 0.1
"""What a pass holding the slow word takes on top of its own time."""


_load_model = loading.load_model


def _load_with_faults(options: loading.LoadOptions) -> ServedModel:
    served = _load_model(options)
    return OverflowsOnAWord(SlowOnAWord(served, SLOW_PASS_SECONDS).served).served


if __name__ == "__main__":
    loading.load_model = _load_with_faults  # read by the entry point when it loads the model
    sys.exit(entry_point.main())
