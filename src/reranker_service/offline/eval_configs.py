"""The configurations an eval compares: ``NAME:key=value,key=value``, each a way to rerank.

A key is a request option (``instruction``, ``max_tokens_per_doc``, ``max_chunks_per_doc``),
``url`` (rerank with that running service), or, in process, any server setting (``dtype``,
``model``, ``max_length``, ``prompt``, ``device``...). Against a service, ``model`` is the
request's ``model`` field: the served model to pick.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from reranker_service.settings import Settings

REQUEST_OPTIONS: Final = {
    "instruction": str,
    "max_tokens_per_doc": int,
    "max_chunks_per_doc": int,
}
"""Sent with each query's request, as a client would."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_PAIR_SEPARATOR = re.compile(r",\s*(?=[a-z_]+=)")
"""A comma before the next ``key=``: an instruction may hold commas of its own."""


class ConfigError(Exception):
    """A configuration that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class EvalConfig:
    name: str
    url: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    """Settings over the command's own, for a configuration served in process."""
    request: Mapping[str, Any] = field(default_factory=dict)
    """Fields added to each rerank request."""

    @property
    def settings_key(self) -> tuple[tuple[str, str], ...]:
        """Configurations with the same key share one loaded model."""
        return tuple(sorted(self.settings.items()))

    def described(self) -> dict[str, Any]:
        shown: dict[str, Any] = {**self.settings, **self.request}
        if self.url is not None:
            shown["url"] = self.url
        return shown


def _pairs(text: str, name: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in _PAIR_SEPARATOR.split(text.strip()) if text.strip() else []:
        key, separator, value = part.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"configuration {name!r}: {part!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def _request_value(name: str, key: str, value: str) -> Any:
    kind = REQUEST_OPTIONS[key]
    if kind is int:
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise ConfigError(f"configuration {name!r}: {key} takes a whole number of 1 or more")
        return number
    return value


def parse_config(text: str, default_url: str | None = None) -> EvalConfig:
    """``NAME`` or ``NAME:key=value,...``."""
    name, _, options = text.partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise ConfigError(
            f"configuration {text!r}: start with a name of letters, digits, '.', '_', '+' or "
            "'-', then ':key=value,...'"
        )
    pairs = _pairs(options, name)
    url = pairs.pop("url", default_url) or None
    request: dict[str, Any] = {
        key: _request_value(name, key, pairs.pop(key))
        for key in list(pairs)
        if key in REQUEST_OPTIONS
    }
    if url is not None and "model" in pairs:
        request["model"] = pairs.pop("model")
    unknown = sorted(key for key in pairs if key not in Settings.model_fields)
    if unknown:
        raise ConfigError(
            f"configuration {name!r}: unknown keys {unknown}; give request options "
            f"({', '.join(REQUEST_OPTIONS)}), url, or server settings (dtype, model, max_length...)"
        )
    if url is not None and pairs:
        raise ConfigError(
            f"configuration {name!r} reranks with {url}: server settings {sorted(pairs)} are that "
            "service's to choose"
        )
    return EvalConfig(name=name, url=url, settings=pairs, request=request)


def parse_configs(texts: list[str], default_url: str | None) -> list[EvalConfig]:
    """Every configuration, the first the reference the others' drift is measured against;
    one named ``default`` when none is given."""
    configs = [parse_config(text, default_url) for text in texts or ["default"]]
    names = [config.name for config in configs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"configuration names repeat: {repeated}")
    return configs
