"""Wire types. One request shape serves the Cohere v1, Cohere v2 and Jina rerank APIs; the
responses carry every field those clients parse."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

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


_MODEL_FIELD = (
    "With several models served, the one to score with (a name or alias of GET /v1/models; "
    "absent: the first; any other: 404). With one, informational: that model answers."
)


class DocumentObject(BaseModel):
    """A document as an object (Cohere v1 / Jina style); only ``text`` is scored."""

    model_config = ConfigDict(extra="allow")

    text: str


_MAX_TOKENS_PER_DOC = Field(
    None,
    ge=1,
    description="Cut each document's own tokens to this many before the prompt is built "
    "(Cohere v2). Absent: the model card's truncation at RERANKER_MAX_LENGTH.",
    examples=[512],
)
PRIORITY_RANGE = (-10, 10)
_PRIORITY = Field(
    None,
    ge=PRIORITY_RANGE[0],
    le=PRIORITY_RANGE[1],
    description="Scheduling priority, -10 to 10, lower first (as vLLM's); 0 when absent, or "
    "the X-Reranker-Priority header's. A pair waiting longer than "
    "RERANKER_PRIORITY_MAX_WAIT_SECONDS goes first whatever its priority.",
    examples=[-5],
)
_RAW_SCORES = Field(
    False,
    description="Scores are logit(yes) - logit(no) instead of P(yes), its sigmoid; ordering "
    "and top_n are the same (TEI's name).",
    examples=[True],
)


class RerankRequest(BaseModel):
    # Unknown fields (rank_fields, ...) are ignored so that SDKs which send them work unchanged.
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
    model: str | None = Field(None, description=_MODEL_FIELD)
    max_tokens_per_doc: int | None = _MAX_TOKENS_PER_DOC
    max_chunks_per_doc: int | None = Field(
        None,
        ge=1,
        description="Score a document too long for one pair as the best of up to this many "
        "consecutive, non-overlapping windows (Cohere v1); the first is the usual truncated "
        "pair. Absent: RERANKER_MAX_CHUNKS_PER_DOC (1). At most RERANKER_MAX_CHUNKS_LIMIT.",
        examples=[4],
    )
    raw_scores: bool = _RAW_SCORES
    priority: int | None = _PRIORITY
    texts: SkipJsonSchema[Any] = Field(None, exclude=True)
    """TEI's field: sent together with ``documents``, the request is ambiguous."""

    @field_validator("texts")
    @classmethod
    def _not_both_shapes(cls, value: Any) -> None:
        if value is not None:
            raise ValueError("send documents (Cohere, Jina) or texts (TEI), not both")
        return

    def document_texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference's ``/rerank`` request, told apart by ``texts``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"query": "What is Deep Learning?", "texts": ["Deep Learning is ..."]},
            ]
        },
    )

    query: str = Field(min_length=1, description="The query.", examples=["What is Deep Learning?"])
    texts: list[str] = Field(description="Documents to rank.", examples=[["Deep Learning is ..."]])
    raw_scores: bool = _RAW_SCORES
    priority: int | None = _PRIORITY
    return_text: bool = Field(False, description="Echo each text in its result.", examples=[True])
    truncate: bool | None = Field(
        None,
        description="false: a pair over RERANKER_MAX_LENGTH is refused (413), as TEI refuses "
        "it. true or absent: it is cut.",
        examples=[True],
    )
    truncation_direction: Literal["Left", "Right", "left", "right"] = Field(
        "Right",
        description="Left: cut the start of a text that does not fit instead of its end.",
        examples=["Right"],
    )


def wire_shape(body: Any) -> str:
    """TEI's shape has ``texts`` and no ``documents``; everything else is Cohere's."""
    if isinstance(body, dict) and "texts" in body and "documents" not in body:
        return "tei"
    if isinstance(body, TeiRerankRequest):
        return "tei"
    return "cohere"


AnyRerankRequest = Annotated[
    Annotated[RerankRequest, Tag("cohere")] | Annotated[TeiRerankRequest, Tag("tei")],
    Discriminator(wire_shape),
]
"""``POST /rerank``'s body: Cohere v1 / Jina, or TEI."""


class TeiRank(BaseModel):
    index: int = Field(ge=0, examples=[0])
    score: float = Field(examples=[1.0])
    text: str | None = Field(None, examples=["Deep Learning is ..."])


class TeiErrorResponse(BaseModel):
    """TEI's error body."""

    error: str
    error_type: str = Field(examples=["validation"])


class ScoreRequest(BaseModel):
    """vLLM's ``/score`` request: each ``text_2`` entry scored against its own ``text_1``
    (or all against the one ``text_1``)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "text_1": "What is the capital of France?",
                    "text_2": ["Paris is the capital of France.", "Berlin is in Germany."],
                }
            ]
        },
    )

    model: str | None = Field(None, description=_MODEL_FIELD, examples=["Qwen/Qwen3-Reranker-0.6B"])
    text_1: str | list[str] = Field(
        description="One query, or one per entry of text_2.",
        examples=[["What is the capital of France?", "Where is Berlin?"]],
    )
    text_2: list[str] = Field(
        description="The documents.",
        examples=[["Paris is the capital of France.", "Berlin is in Germany."]],
    )
    instruction: str | None = Field(
        None,
        min_length=1,
        description="Task instruction; the service default when absent.",
        examples=["Given a question, retrieve passages that answer it"],
    )
    max_tokens_per_doc: int | None = _MAX_TOKENS_PER_DOC
    raw_scores: bool = _RAW_SCORES
    priority: int | None = _PRIORITY

    @field_validator("text_2", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def queries(self) -> list[str]:
        return [self.text_1] if isinstance(self.text_1, str) else self.text_1


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


class ResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(
        description="P(yes) from the model, in [0, 1]; logit(yes) - logit(no) with raw_scores."
    )
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
