"""``python -m reranker_service.tiny_checkpoint``: the ``reranker-make-test-model`` command."""

from reranker_service.tiny_checkpoint.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
