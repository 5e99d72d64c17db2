"""Wire types. One request shape serves the Cohere v1, Cohere v2 and Jina rerank APIs; the
responses carry every field those clients parse."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

_EXAMPLE_DOCUMENTS: list[JsonValue] = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
]
_EXAMPLE_REQUEST: dict[str, JsonValue] = {
    "query": "What is the capital of France?",
    "documents": _EXAMPLE_DOCUMENTS,
    "top_n": 2,
    "return_documents": True,
}


class DocumentObject(BaseModel):
    """A document as an object (Cohere v1 / Jina style); only ``text`` is scored."""

    model_config = ConfigDict(extra="allow")

    text: str


class RerankRequest(BaseModel):
    # Unknown fields (rank_fields, max_chunks_per_doc, ...) are ignored so that SDKs which
    # send them work unchanged.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [_EXAMPLE_REQUEST]})

    query: str = Field(min_length=1, description="The search query.")
    documents: list[str | DocumentObject] = Field(
        description="Documents to rank: strings, or objects with a `text` field."
    )
    top_n: int | None = Field(
        None, ge=1, description="Return only the best N results; larger than the list = all."
    )
    return_documents: bool = Field(False, description="Echo each document's text in its result.")
    instruction: str | None = Field(
        None, min_length=1, description="Task instruction; the service default when absent."
    )
    model: str | None = Field(None, description="Informational; the served model answers.")

    def document_texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]


class ResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="P(yes) from the model, in [0, 1].")
    document: ResultDocument | None = Field(None, description="Present if return_documents.")


class Usage(BaseModel):
    total_tokens: int = Field(description="Tokens fed to the model, prompt template included.")
    prompt_tokens: int = Field(description="Same as total_tokens: reranking generates nothing.")


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int
    input_tokens: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5d3c6bd2-3e4b-4a47-9c69-0e2b6d1a9f7e",
                    "model": "Qwen/Qwen3-Reranker-0.6B",
                    "results": [
                        {
                            "index": 0,
                            "relevance_score": 0.9963,
                            "document": {"text": _EXAMPLE_DOCUMENTS[0]},
                        },
                        {
                            "index": 2,
                            "relevance_score": 0.4018,
                            "document": {"text": _EXAMPLE_DOCUMENTS[2]},
                        },
                    ],
                    "usage": {"total_tokens": 291, "prompt_tokens": 291},
                    "meta": {
                        "api_version": {"version": "1"},
                        "billed_units": {"search_units": 1, "input_tokens": 291},
                    },
                }
            ]
        }
    )

    id: str = Field(description="The request id (also in the X-Request-ID header).")
    model: str
    results: list[RerankResult] = Field(description="Sorted by relevance_score, highest first.")
    usage: Usage
    meta: Meta


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    limit: int | float | None = None
    value: int | float | str | bool | None = None


class ErrorBody(BaseModel):
    type: str = Field(description="Machine-readable error class, e.g. validation, overloaded.")
    message: str
    field: str | None = None
    limit: int | float | None = None
    value: int | float | str | bool | None = None
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "draining"]


class ServedDevice(BaseModel):
    name: str = Field(description="the worker's device: cuda:N, cpu, or cpu:N with several")
    uuid: str | None = Field(description="the GPU's UUID, as NVML and nvidia-smi give it")


class InfoResponse(BaseModel):
    model: str
    revision: str
    device: str = Field(description="the served devices, comma-separated")
    devices: list[ServedDevice] = Field(description="one entry per worker and model replica")
    dtype: str
    max_length: int
    max_documents: int
    max_batch_tokens: int
    max_queued_pairs: int
    prefix_reuse: bool
    max_request_bytes: int
    default_instruction: str
    auth_required: bool
    version: str
