"""``reranker-healthcheck``: exit 0 if this container's service answers ``/health``.

For Docker's HEALTHCHECK: the slim image has no curl, and the port comes from the same
settings the service reads.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from reranker_service.cli import SettingsError, load_settings

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"reranker-healthcheck: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"reranker-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
