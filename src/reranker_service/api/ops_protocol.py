"""The operations routes' answers: liveness, readiness, what is served (``/info``), and the
served models in OpenAI's list shape (``/v1/models``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthResponse(BaseModel):
    status: Literal["ok", "failed"]
    failed_devices: dict[str, str] | None = Field(
        None,
        description="devices that failed for good (a sticky CUDA error), and why: the process "
        "must be restarted",
    )


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "draining", "failed"]


class RunnerInfo(BaseModel):
    name: str = Field(description="the runner serving now: `padded` or `packed`")
    compiled: bool
    cuda_graphs: bool = Field(description="whether its small passes replay CUDA graphs")
    compile_state: Literal["off", "compiling", "compiled", "fallback"] = Field(
        description="off: nothing to compile; compiling: in the background, the eager runner "
        "serves meanwhile; compiled: the compiled runner serves; fallback: it failed, the "
        "eager runner serves on"
    )
    compile_seconds: float | None = Field(
        None, description="from the start of compiling to serving, or to the failure"
    )
    compile_stage: str | None = Field(
        None,
        description="where compiling is (compiling) or where it failed (fallback): build, "
        "compile, capture, self_check, pass_costs, swap",
    )
    compile_error: str | None = Field(None, description="why it fell back: the error's first line")


class ServedDevice(BaseModel):
    name: str = Field(description="the worker's device: cuda:N, cpu, or cpu:N with several")
    uuid: str | None = Field(description="the GPU's UUID, as NVML and nvidia-smi give it")
    runner: RunnerInfo | None = Field(None, description="what serves on it now")


class DtypeChoiceInfo(BaseModel):
    reason: str = Field(description="why this number format (auto on a CPU)")
    cpu_flags: list[str] = Field(
        description="the CPU's flags that compute bf16 natively, as Linux lists them"
    )
    self_check_max_difference: float | None = Field(
        description="largest |score - fp32 score| over the start-up self-check's pairs"
    )


class CacheInfo(BaseModel):
    backend: str = Field(
        description="the stores serving, nearest first, joined by `+` (`memory`, `redis`, "
        "`memory+redis`), or `off`"
    )
    size: int = Field(description="in-process entries at most (0: no in-process cache)")
    ttl_seconds: float
    redis: bool = Field(description="whether replicas share scores through Redis")


class ModelInfo(BaseModel):
    name: str = Field(description="what a request's model names it by")
    aliases: list[str] = Field(description="other names it answers to")
    checkpoint: str = Field(description="the Hugging Face id or local directory served")
    kind: Literal["qwen3", "qwen3-seq-cls", "seq-cls"] = Field(
        description="qwen3: Qwen3-Reranker (causal LM); qwen3-seq-cls: its sequence-"
        "classification form (same prompt); seq-cls: a cross-encoder (the tokenizer's pair "
        "template)"
    )
    architecture: str = Field(description="the checkpoint's transformers class")
    revision: str
    dtype: str
    devices: list[ServedDevice] = Field(description="one entry per worker")
    max_length: int = Field(description="tokens per pair, special tokens and prompt included")
    max_batch_tokens: int
    max_queued_pairs: int
    prefix_reuse: bool = Field(description="whether a request's shared prefix is computed once")
    takes_instruction: bool = Field(description="whether a request may send an instruction")
    default_instruction: str | None = Field(
        description="what a request without one gets (None: a model without a prompt)"
    )
    weight_bytes: int = Field(description="memory its weights take, one replica")
    device_memory_allocated_bytes: int | None = Field(
        None, description="torch's allocator on its GPUs, summed (the process's, all models)"
    )


class InfoResponse(BaseModel):
    model: str = Field(description="the default model's name")
    models: list[ModelInfo] = Field(description="every served model, the default first")
    revision: str
    device: str = Field(description="the served devices, comma-separated")
    devices: list[ServedDevice] = Field(
        description="the default model's workers, one entry per worker and model replica"
    )
    dtype: str
    dtype_choice: DtypeChoiceInfo | None = Field(
        None, description="why a CPU serves this format, where auto chose it"
    )
    max_length: int
    max_documents: int
    max_chunks_per_doc: int = Field(description="windows per document when a request asks none")
    max_chunks_limit: int = Field(description="the most windows a request may ask for")
    max_request_pairs: int = Field(description="pairs (documents and windows) per request")
    max_batch_tokens: int
    max_queued_pairs: int
    prefix_reuse: bool
    max_request_bytes: int
    default_instruction: str
    auth_required: bool
    cache: CacheInfo = Field(description="the pair-score cache")
    version: str


class ModelCard(BaseModel):
    """One entry of ``/v1/models``, as OpenAI and vLLM list a model."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the service started serving it (Unix seconds)")
    owned_by: str = "reranker-service"
    root: str = Field(description="the checkpoint served under this name")
    parent: str | None = Field(None, description="for an alias, the name it stands for")
    max_model_len: int = Field(description="tokens per pair")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
