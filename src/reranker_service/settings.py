"""Service configuration: every knob is a ``RERANKER_*`` variable and a CLI flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reranker_service.engine.runner.names import RunnerChoice
from reranker_service.model_specs import (
    DType,
    ModelOptions,
    ModelSpec,
    PromptChoice,
    model_specs,
    normalized_devices,
    parse_model_pairs,
    read_models_file,
)

ENV_PREFIX = "RERANKER_"
DEFAULT_MODEL = "Qwen/Qwen3-Reranker-0.6B"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

LogLevel = Literal["debug", "info", "warning", "error"]
Compile = Literal["auto", "background", "true", "false"]


def default_compile_cache() -> str:
    """Beside the Hugging Face cache (``HF_HOME``)."""
    from huggingface_hub import constants

    return str(Path(constants.HF_HOME).parent / "reranker-compile")


def _secret_from_file(data: Any, file_field: str, value_field: str) -> Any:
    """``data`` with ``value_field`` read from the file ``file_field`` names, if it names one."""
    if not isinstance(data, dict) or data.get(file_field) is None:
        return data
    if data.get(value_field) is not None:
        raise ValueError(f"set {value_field} or {file_field}, not both")
    path = Path(str(data[file_field]))
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{file_field} {str(path)!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file_field} {str(path)!r} is not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{file_field} {str(path)!r} is empty")
    return {**data, value_field: secret}


class Settings(BaseSettings):
    """Validated once at startup; a bad value stops the process with a clear message."""

    # An empty variable means unset: compose files pass ``${RERANKER_API_KEY:-}`` through.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_ignore_empty=True
    )

    model: str = Field(DEFAULT_MODEL, description="Hugging Face model id or local directory")
    models: str | None = Field(
        None,
        description="several models in one process: name=checkpoint pairs separated by commas "
        "(qwen=Qwen/Qwen3-Reranker-0.6B,bge=BAAI/bge-reranker-v2-m3); the first is the "
        "default; a request's model picks one. Unset: RERANKER_MODEL alone",
    )
    models_file: str | None = Field(
        None,
        description="YAML file of the served models with per-model options (device, dtype, "
        "max_length, max_batch_tokens, default_instruction, aliases, prompt); see "
        "docs/configuration.md",
    )
    prompt: PromptChoice = Field(
        "auto",
        description="auto (a Qwen3 sequence classifier whose tokenizer has Qwen3's chat tokens "
        "gets Qwen3-Reranker's prompt) or none (served as a plain cross-encoder)",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    device: str = Field(
        "auto",
        description="auto, cpu, cuda, cuda:N, a comma-separated list (cuda:0,cuda:1; cpu,cpu) "
        "or cuda:all: one model replica and worker per entry",
    )
    dtype: DType = Field(
        "auto",
        description="auto (bf16 on a GPU; on a CPU bf16 where it is native and a start-up "
        "self-check agrees, else fp32), float32, float16 or bfloat16",
    )
    runner: RunnerChoice = Field(
        "auto",
        description="how a forward pass is laid out: packed (the pairs of a pass in one "
        "token stream, each prompt prefix once; the default on a GPU) or padded (a row per "
        "pair; the default on the CPU, where it is measured faster)",
    )
    compile: Compile = Field(
        "auto",
        description="the packed runner compiled over token-count buckets, CUDA graphs for "
        "the small ones: background (ready at once on the padded runner, the compiled one "
        "swapped in after a self-check; any failure keeps the padded one), true (ready only "
        "once compiled; a failure stops start-up), false (nothing compiled), auto (background "
        "on a GPU; false on the CPU, where it is measured slower)",
    )
    compile_cache: str = Field(
        default_factory=default_compile_cache,
        description="persistent compile cache folder (mount it as a volume); default beside "
        "the Hugging Face cache",
    )
    host: str = Field("0.0.0.0", description="listen address")
    limit_concurrency: int = Field(
        1000,
        ge=1,
        description="open connections (and requests in flight) at most; past it, new requests "
        "get 503. Keep it under the process's open-file limit",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="a connection whose request headers have not all arrived after this long "
        "is closed (slow or idle clients cannot hold connections)",
    )
    keep_alive_seconds: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this long"
    )
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    max_length: int = Field(
        8192, ge=64, le=131072, description="tokens per (query, document) pair, prompt included"
    )
    max_documents: int = Field(1000, ge=1, description="documents per request")
    max_chunks_per_doc: int = Field(
        1,
        ge=1,
        description="windows a long document is scored over when the request does not say "
        "(1 = truncate, as the model card)",
    )
    max_chunks_limit: int = Field(
        16, ge=1, description="the most windows a request may ask for with max_chunks_per_doc"
    )
    max_request_pairs: int | None = Field(
        None,
        ge=1,
        description="pairs one request may bring, each window of a document counted "
        "(above: 413); unset = max_documents x max_chunks_per_doc",
    )
    prefix_reuse: bool = Field(
        True, description="compute a request's shared prompt prefix once (true or false)"
    )
    max_batch_tokens: int | None = Field(
        None, ge=1, description="padded tokens per forward pass; unset = chosen by the engine"
    )
    max_queued_pairs: int | None = Field(
        None,
        ge=1,
        description="pairs waiting before new work gets 429; unset = chosen by the engine",
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="largest accepted request body"
    )
    default_instruction: str = Field(
        DEFAULT_INSTRUCTION, min_length=1, description="instruction used when a request has none"
    )
    tokenizer_threads: int = Field(2, ge=1, le=64, description="threads that tokenize requests")
    api_key: SecretStr | None = Field(
        None, description="if set, /rerank routes need 'Authorization: Bearer <key>'"
    )
    api_key_file: str | None = Field(
        None, description="file holding the API key (Docker or Kubernetes secrets); read at start"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port instead of the API's"
    )
    cors_origins: str = Field(
        "", description="comma-separated origins allowed cross-origin, '*' for any; empty = off"
    )
    request_timeout_seconds: float = Field(
        60.0,
        ge=0,
        description="answer 504 and drop a request's queued pairs after this long; 0 = never",
    )
    shutdown_grace_seconds: int = Field(
        30, gt=0, description="time in-flight requests get to finish after SIGTERM"
    )
    log_level: LogLevel = Field("info", description="debug, info, warning or error")
    log_format: Literal["json", "console"] = Field("json", description="json or console")
    log_query_chars: int = Field(0, ge=0, description="characters of query text in logs; 0 = none")
    log_sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="share of successful requests whose completion is logged"
    )
    gpu_poll_seconds: float = Field(5.0, gt=0, description="NVML poll interval")
    cache_size: int = Field(
        100_000, ge=0, description="in-process pair-score cache, in entries; 0 turns it off"
    )
    cache_ttl_seconds: float = Field(
        3600.0, gt=0, description="how long a cached score is kept (in process and in Redis)"
    )
    cache_url: str | None = Field(
        None,
        description="redis://… or rediss://…: share the score cache across replicas "
        "(fail-open: Redis down or slow means scoring as if nothing were cached)",
    )
    cache_timeout_ms: float = Field(20.0, gt=0, description="Redis timeout per lookup or write")
    cache_password: SecretStr | None = Field(
        None, description="Redis password, if the URL has none"
    )
    cache_password_file: str | None = Field(
        None, description="file holding the Redis password (Docker or Kubernetes secrets)"
    )
    priority_max_wait_seconds: float = Field(
        10.0,
        gt=0,
        description="aging bound: a pair waiting longer goes first whatever its priority",
    )

    _model_specs: tuple[ModelSpec, ...] = PrivateAttr(default=())

    @field_validator("device")
    @classmethod
    def _known_devices(cls, value: str) -> str:
        return normalized_devices(value)

    @field_validator("dtype", mode="before")
    @classmethod
    def _no_int8(cls, value: object) -> object:
        if value == "int8":
            raise ValueError(
                "int8 was removed: served eagerly it was slower than bf16 on every CPU measured, "
                "and less exact than the docs promised (docs/benchmark.md, 'int8'). Use auto, "
                "which serves bf16 where the CPU computes it"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """Secret files are read here, once; afterwards only ``api_key`` and
        ``cache_password`` exist for the app."""
        data = _secret_from_file(data, "api_key_file", "api_key")
        return _secret_from_file(data, "cache_password_file", "cache_password")

    @field_validator("cache_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("a redis://, rediss:// or unix:// URL")
        return value

    @property
    def request_pairs_limit(self) -> int:
        """The most pairs (documents and their windows) one request may bring."""
        return self.max_request_pairs or self.max_documents * self.max_chunks_per_doc

    @model_validator(mode="after")
    def _limits_fit_together(self) -> Self:
        if self.max_chunks_per_doc > self.max_chunks_limit:
            raise ValueError(
                f"max_chunks_per_doc ({self.max_chunks_per_doc}) must be at most "
                f"max_chunks_limit ({self.max_chunks_limit})"
            )
        if self.request_pairs_limit < self.max_documents:
            raise ValueError(
                f"max_request_pairs ({self.request_pairs_limit}) must be at least max_documents "
                f"({self.max_documents})"
            )
        if self.max_batch_tokens is not None and self.max_batch_tokens < self.max_length:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be at least max_length "
                f"({self.max_length}) so that one full-length pair fits in a forward pass"
            )
        if self.max_queued_pairs is not None and self.max_queued_pairs < self.request_pairs_limit:
            raise ValueError(
                f"max_queued_pairs ({self.max_queued_pairs}) must be at least max_request_pairs "
                f"({self.request_pairs_limit}) or a full-size request could never be accepted"
            )
        return self

    @model_validator(mode="after")
    def _served_models(self) -> Self:
        """``RERANKER_MODELS`` and ``RERANKER_MODELS_FILE`` read, checked and resolved once."""
        if (self.models or self.models_file) and "model" in self.model_fields_set:
            raise ValueError(
                "set RERANKER_MODEL, or RERANKER_MODELS and RERANKER_MODELS_FILE, not both"
            )
        defaults = {
            "revision": self.revision,
            "device": self.device,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "max_batch_tokens": self.max_batch_tokens,
            "prompt": self.prompt,
        }
        pairs = parse_model_pairs(self.models) if self.models is not None else {}
        entries = read_models_file(Path(self.models_file)) if self.models_file else {}
        if not pairs and not entries:
            pairs = {self.model: self.model}
            entries = {self.model: ModelOptions()}
        self._model_specs = model_specs(pairs, entries, defaults)
        return self

    @property
    def model_specs(self) -> tuple[ModelSpec, ...]:
        """The served models, the default first; one, named by ``model``, unless
        ``RERANKER_MODELS`` or ``RERANKER_MODELS_FILE`` list several."""
        return self._model_specs

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
