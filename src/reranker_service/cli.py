"""Command-line flags derived from the ``Settings`` fields, so the two never drift apart."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from reranker_service import __version__
from reranker_service.settings import ENV_PREFIX, Settings


class SettingsError(Exception):
    """Configuration that cannot be used; the message is meant for the operator."""


def _flag_type(annotation: Any) -> type:
    """The scalar type argparse should convert a flag's text to."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _flag_type(members[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if annotation in (SecretStr, bool):
        return str  # pydantic reads true/false, 1/0, yes/no, on/off
    if annotation in (int, float, str):
        return typing.cast(type, annotation)
    raise TypeError(f"no CLI conversion for {annotation!r}")


def _describe(name: str, field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True, validated_data={})
    default = "unset" if value is None else repr(value)
    return f"{field.description} [env {env_name(name)}; default {default}]"


def env_name(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return f"{ENV_PREFIX}{name.upper()}"


def _flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _setting_named(location: tuple[int | str, ...]) -> str:
    """What the operator set, as they set it: the variable and its flag (the whole
    configuration, for a rule between settings)."""
    if not location or str(location[0]) not in Settings.model_fields:
        return "settings"
    name = str(location[0])
    return f"{env_name(name)} ({_flag_name(name)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker-service",
        description=(
            "Serve Qwen3-Reranker over HTTP. Every flag can also be given as an environment "
            "variable; flags win over the environment. Subcommands: 'reranker-service batch "
            "IN.jsonl OUT.jsonl' scores a JSONL file, 'reranker-service eval' measures ranking "
            "quality (each with --help)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_settings_arguments(parser)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """A flag for every ``Settings`` field (``--max-length`` for ``max_length``), whose value
    lands under the field's name, absent unless given."""
    for name, field in Settings.model_fields.items():
        choices = None
        annotation = field.annotation
        if typing.get_origin(annotation) is typing.Literal:
            choices = list(typing.get_args(annotation))
        parser.add_argument(
            _flag_name(name),
            dest=name,
            type=_flag_type(annotation),
            choices=choices,
            default=argparse.SUPPRESS,
            help=_describe(name, field),
        )


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give 1 or more")
    return value


def settings_flags(arguments: argparse.Namespace) -> dict[str, Any]:
    """The settings among parsed ``arguments`` (those ``add_settings_arguments`` added)."""
    return {name: value for name, value in vars(arguments).items() if name in Settings.model_fields}


def _is_secret(location: tuple[int | str, ...]) -> bool:
    """Errors about a secret setting (or the whole model, which may hold one) never echo it."""
    field = Settings.model_fields.get(str(location[0])) if location else None
    return field is None or field.annotation in (SecretStr, SecretStr | None)


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Environment first, flags on top; raise ``SettingsError`` naming every bad value."""
    return settings_from(vars(build_parser().parse_args(argv)))


def settings_from(flags: Mapping[str, Any]) -> Settings:
    """The environment's settings with ``flags`` (by field name) on top; ``SettingsError``
    names every bad value."""
    try:
        return Settings(**flags)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = _setting_named(error["loc"])
            shown = "" if _is_secret(error["loc"]) else f" (got {error.get('input')!r})"
            problems.append(f"{where}: {error['msg']}{shown}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
