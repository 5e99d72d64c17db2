"""The configurations ``reranker-service eval`` compares, as a user writes them."""

from __future__ import annotations

import pytest

from reranker_service.offline.eval_configs import ConfigError, parse_config, parse_configs


def test_settings_and_request_options_are_told_apart() -> None:
    config = parse_config(
        "short:dtype=float32, max_tokens_per_doc=128,instruction=Find a passage, in English"
    )

    assert config.name == "short"
    assert config.url is None
    assert dict(config.settings) == {"dtype": "float32"}
    assert dict(config.request) == {
        "max_tokens_per_doc": 128,
        "instruction": "Find a passage, in English",  # its comma is not a separator
    }


def test_against_a_service_model_names_the_served_model_to_pick() -> None:
    config = parse_config("other:model=bge", default_url="http://reranker:8000")

    assert config.url == "http://reranker:8000"
    assert dict(config.request) == {"model": "bge"}
    assert dict(config.settings) == {}


def test_configurations_differing_in_request_options_share_a_loaded_model() -> None:
    first, second, third = parse_configs(
        ["a:dtype=float32", "b:dtype=float32,max_chunks_per_doc=4", "c:dtype=bfloat16"], None
    )

    assert first.settings_key == second.settings_key != third.settings_key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("odd:temperature=2", "unknown keys ['temperature']"),
        ("n:max_tokens_per_doc=0", "max_tokens_per_doc takes a whole number of 1 or more"),
        ("n:dtype", "'dtype' is not key=value"),
        (":dtype=float32", "start with a name"),
        ("remote:url=http://x:8000,dtype=float32", "server settings ['dtype'] are that service's"),
    ],
)
def test_a_configuration_that_cannot_be_used_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_configs([text], None)


def test_no_configuration_is_one_named_default_and_names_must_differ() -> None:
    assert [config.name for config in parse_configs([], None)] == ["default"]
    with pytest.raises(ConfigError, match="names repeat"):
        parse_configs(["a", "a:dtype=float32"], None)
