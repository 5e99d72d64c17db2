"""structlog set up once: one JSON object per line on stdout, stdlib records included."""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import Processor, WrappedLogger

from reranker_service.observability.tracing import add_trace_ids

# uvicorn installs its own handlers unless told not to; these loggers must reach the root.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi")
# These install a stderr handler of their own when they are imported (and transformers and torch
# stop propagation), so they are imported before their loggers are routed: routing them first
# would be undone by the model loader's import.
_LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "torch")

_ACCESS_LOGGER = "uvicorn.access"
# Import-time chatter of torchao, which transformers imports whenever it is installed (the
# service does not need it; an environment shared with other tools may hold it): its CUDA
# kernel libraries fail to load on a CPU-only torch, and it registers enums the way torch now
# calls deprecated. Neither concerns serving.
_IMPORT_NOISE = (
    ("torchao", re.compile(r"^Failed to load .*\.so: ")),
    ("torchao.kernel.intmm", re.compile(r"Detected no triton")),
    ("torch.utils._pytree", re.compile(r"is an Enum subclass and is now natively supported")),
)


def configure_logging(
    level: str = "info",
    log_format: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
    *,
    quiet_access_paths: frozenset[str] = frozenset(),
    trace_ids: bool = False,
) -> None:
    """Once, before anything logs. ``stream`` defaults to stdout. The access lines of successful
    requests to ``quiet_access_paths`` (probes and scrapes, and routes that write a line of their
    own) are written at debug. With ``trace_ids`` (tracing is on), a line written inside a span
    carries its ``trace_id`` and ``span_id``."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        *([add_trace_ids] if trace_ids else []),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    output = stream if stream is not None else sys.stdout
    renderer: Processor
    if log_format == "console":
        # Colours for a person at a terminal; a file or a pipe gets plain text.
        renderer = structlog.dev.ConsoleRenderer(colors=_is_terminal(output))
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        # Drop lines below the level before any processor runs (debug lines on the hot path).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_structure_access_record, *shared],
        pass_foreign_args=True,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    drop_import_noise()
    for library in _LIBRARY_LOGGERS:
        importlib.import_module(library)
    _route_to_root(*_SERVER_LOGGERS, *_LIBRARY_LOGGERS)
    access = logging.getLogger(_ACCESS_LOGGER)
    for old in [f for f in access.filters if isinstance(f, _QuietAccess)]:
        access.removeFilter(old)
    access.addFilter(_QuietAccess(quiet_access_paths))


def drop_import_noise() -> None:
    """Filter out the import-time chatter of torchao and torch (``_IMPORT_NOISE``); call before
    they are imported. Idempotent."""
    for name, pattern in _IMPORT_NOISE:
        noisy = logging.getLogger(name)
        for dropping in [f for f in noisy.filters if isinstance(f, _DropMessages)]:
            noisy.removeFilter(dropping)
        noisy.addFilter(_DropMessages(pattern))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _route_to_root(*logger_names: str) -> None:
    """Make these loggers, and the ones below them that exist now, hand their records to the
    root handler (and so to the one renderer) instead of handlers of their own. Levels are left
    as the libraries chose."""
    existing = list(logging.Logger.manager.loggerDict)
    for name in logger_names:
        below = [other for other in existing if other.startswith(f"{name}.")]
        for routed_name in (name, *below):
            routed = logging.getLogger(routed_name)
            routed.handlers.clear()
            routed.propagate = True


def _access_fields(name: str, args: object) -> tuple[str, str, str, str, int] | None:
    """uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with client, method, path, version, status."""
    if name != _ACCESS_LOGGER or not isinstance(args, tuple) or len(args) != 5:
        return None
    client, method, path, http_version, status = args
    if not isinstance(status, int):
        return None
    return str(client), str(method), str(path), str(http_version), status


def _structure_access_record(
    _logger: WrappedLogger, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Give uvicorn's access lines fields instead of one preformatted string."""
    args = event_dict.pop("positional_args", None)
    record = event_dict.get("_record")
    name = record.name if isinstance(record, logging.LogRecord) else ""
    fields = _access_fields(name, args)
    if fields is not None:
        client, method, path, http_version, status = fields
        event_dict.update(
            event="http_request",
            client=client,
            method=method,
            path=path,
            http_version=http_version,
            status=status,
        )
    return event_dict


class _DropMessages(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self._pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._pattern.search(record.getMessage())


class _QuietAccess(logging.Filter):
    """Demote the access lines of successful requests to some paths to debug."""

    def __init__(self, paths: frozenset[str]) -> None:
        super().__init__()
        self._paths = paths

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _access_fields(record.name, record.args)
        if fields is None:
            return True
        path, status = fields[2].partition("?")[0], fields[4]
        if path not in self._paths or status >= 400:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
