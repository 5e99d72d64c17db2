from __future__ import annotations

import pytest

from reranker_service.app import engine_config
from reranker_service.cli import SettingsError, build_parser, load_settings
from reranker_service.engine.rerank_engine import choose_limits
from reranker_service.engine.scoring import ModelDescription
from reranker_service.settings import Settings, default_compile_cache


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"RERANKER_{name.upper()}", raising=False)
    settings = load_settings([])
    assert settings.model == "Qwen/Qwen3-Reranker-0.6B"
    assert (settings.device, settings.dtype) == ("auto", "auto")
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert (settings.max_length, settings.max_documents) == (8192, 1000)
    assert settings.api_key is None
    assert (settings.log_level, settings.log_query_chars, settings.log_sample_rate) == (
        "info",
        0,
        1.0,
    )
    assert settings.gpu_poll_seconds == 5
    assert settings.prefix_reuse is True
    for device in ("cpu", "cuda:0"):
        described = ModelDescription("m", "local", device, "float32", settings.max_length, 0.0)
        limits = choose_limits(engine_config(settings), described)
        assert limits.max_queued_pairs >= settings.max_documents
        assert limits.max_batch_tokens >= settings.max_length


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_MAX_DOCUMENTS", "50")
    monkeypatch.setenv("RERANKER_DEVICE", "cuda:1")
    monkeypatch.setenv("RERANKER_API_KEY", "from-env")
    monkeypatch.setenv("RERANKER_LOG_LEVEL", "DEBUG")
    settings = load_settings(["--device", "cpu", "--max-batch-tokens", "16384"])
    assert settings.max_documents == 50
    assert settings.device == "cpu"
    assert settings.max_batch_tokens == 16384
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-env"
    assert settings.log_level == "debug"
    assert "from-env" not in repr(settings)


def test_prefix_reuse_reads_true_and_false_from_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKER_PREFIX_REUSE", "false")
    assert load_settings([]).prefix_reuse is False
    assert load_settings(["--prefix-reuse", "true"]).prefix_reuse is True
    with pytest.raises(SettingsError, match="RERANKER_PREFIX_REUSE"):
        load_settings(["--prefix-reuse", "sometimes"])


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose files pass ``RERANKER_API_KEY: ${RERANKER_API_KEY:-}``; empty must not be a key."""
    monkeypatch.setenv("RERANKER_API_KEY", "")
    monkeypatch.setenv("RERANKER_MAX_BATCH_TOKENS", "")
    settings = load_settings([])
    assert settings.api_key is None
    assert settings.max_batch_tokens is None


def test_help_lists_every_setting_with_env_name_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"RERANKER_{name.upper()}" in text
    assert "default 'Qwen/Qwen3-Reranker-0.6B'" in text
    assert "default 8192" in text
    # A default computed at start-up (the compile cache, beside the hub cache) shows its value.
    assert "PydanticUndefined" not in text
    assert f"default {default_compile_cache()!r}" in text


def test_a_bad_value_names_the_variable_and_the_flag_the_operator_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RERANKER_LOG_SAMPLE_RATE", "1.5")
    with pytest.raises(SettingsError) as refused:
        load_settings([])
    message = str(refused.value)
    assert "RERANKER_LOG_SAMPLE_RATE (--log-sample-rate): " in message
    assert "(got '1.5')" in message
    assert "log_sample_rate:" not in message


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--device", "tpu"], "device"),
        (["--port", "70000"], "port"),
        (["--max-length", "8192", "--max-batch-tokens", "100"], "max_batch_tokens"),
        (["--max-documents", "10", "--max-queued-pairs", "5"], "max_queued_pairs"),
        (["--log-sample-rate", "1.5"], "RERANKER_LOG_SAMPLE_RATE"),
    ],
)
def test_bad_values_stop_with_a_clear_message(argv: list[str], complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint):
        load_settings(argv)


def test_int8_is_refused_with_why_it_went(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployments that set RERANKER_DTYPE=int8 before its removal stop at start with the reason
    and what to set instead, rather than a bare list of choices."""
    monkeypatch.setenv("RERANKER_DTYPE", "int8")
    with pytest.raises(SettingsError, match=r"int8 was removed: .* Use auto"):
        load_settings([])


def test_unknown_choice_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(["--dtype", "int4"])
    assert exited.value.code == 2
