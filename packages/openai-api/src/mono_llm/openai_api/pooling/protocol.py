"""Request and response models of the pooling endpoints, with vLLM's field names and shapes.

POST /v1/embeddings (OpenAI), /pooling, /classify, /score (+ /v1/score), /rerank and
/v1/rerank (Jina), /v2/rerank (Cohere v2). /score accepts its two sides under any of the
names clients use: text_1/text_2 (vLLM), queries/documents, queries/items, data_1/data_2.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field, model_validator

from mono_llm.openai_api.chat_completion.protocol import ChatMessage
from mono_llm.openai_api.protocol import OpenAIBaseModel, UsageInfo

# A string, a list of strings, a list of token ids, or a list of token-id lists.
PoolingInput = str | list[str] | list[int] | list[list[int]]
EmbedDtype = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
DataT = TypeVar("DataT")


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _PoolingCommon(OpenAIBaseModel):
    model: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    priority: int = 0
    request_id: str | None = None
    user: str | None = None


class _ActivationMixin(OpenAIBaseModel):
    # vLLM renamed `activation` to `use_activation`; both are accepted.
    use_activation: bool | None = None
    activation: bool | None = None

    @property
    def resolved_activation(self) -> bool | None:
        return self.use_activation if self.use_activation is not None else self.activation


class _ChatInputMixin(OpenAIBaseModel):
    """vLLM's chat form of /v1/embeddings and /pooling: `messages` rendered by the model's
    chat template instead of `input` (e.g. instruction-tuned decoder embedders)."""

    input: PoolingInput | None = None
    messages: list[ChatMessage] | None = None
    # Default: true for `input`, false for `messages` (the template holds the special tokens).
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input_form(self) -> _ChatInputMixin:
        if (self.input is None) == (self.messages is None):
            raise ValueError("Give exactly one of input and messages.")
        return self


class _VectorOutputMixin(OpenAIBaseModel):
    """How /v1/embeddings and /pooling return a vector."""

    encoding_format: Literal["float", "base64"] = "float"
    # vLLM's extras for base64: the element type and byte order of the encoded vector.
    embed_dtype: EmbedDtype = "float32"
    endianness: Literal["native", "big", "little"] = "native"
    dimensions: int | None = None
    normalize: bool | None = None


class _ListResponse(OpenAIBaseModel, Generic[DataT]):
    """The list envelope of /v1/embeddings, /pooling, /classify and /score; each names its
    `data` items and gives `id` its own prefix."""

    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[DataT]
    usage: UsageInfo


# ---------------------------------------------------------------- /v1/embeddings
class EmbeddingRequest(_ChatInputMixin, _PoolingCommon, _VectorOutputMixin):
    pass


class EmbeddingResponseData(OpenAIBaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(_ListResponse[EmbeddingResponseData]):
    id: str = Field(default_factory=lambda: _id("embd"))


# ---------------------------------------------------------------- /pooling
class PoolingRequest(_ChatInputMixin, _PoolingCommon, _ActivationMixin, _VectorOutputMixin):
    pass


class PoolingResponseData(OpenAIBaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float] | str


class PoolingResponse(_ListResponse[PoolingResponseData]):
    id: str = Field(default_factory=lambda: _id("pool"))


# ---------------------------------------------------------------- /classify
class ClassificationRequest(_PoolingCommon, _ActivationMixin):
    input: PoolingInput
    add_special_tokens: bool = True


class ClassificationData(OpenAIBaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(_ListResponse[ClassificationData]):
    id: str = Field(default_factory=lambda: _id("classify"))


# ---------------------------------------------------------------- /score
ScoreSide = str | list[str]
_FIRST_NAMES = ("text_1", "queries", "data_1")
_SECOND_NAMES = ("text_2", "documents", "items", "data_2")


class ScoreRequest(_PoolingCommon, _ActivationMixin):
    text_1: ScoreSide | None = None
    text_2: ScoreSide | None = None
    queries: ScoreSide | None = None
    documents: ScoreSide | None = None
    items: ScoreSide | None = None
    data_1: ScoreSide | None = None
    data_2: ScoreSide | None = None

    @model_validator(mode="after")
    def _one_name_per_side(self) -> ScoreRequest:
        for names in (_FIRST_NAMES, _SECOND_NAMES):
            given = [n for n in names if getattr(self, n) is not None]
            if len(given) != 1:
                raise ValueError(
                    f"Give exactly one of {', '.join(names)}"
                    + (f" (got {', '.join(given)})." if given else ".")
                )
        return self

    @property
    def first(self) -> ScoreSide:
        return next(getattr(self, n) for n in _FIRST_NAMES if getattr(self, n) is not None)

    @property
    def second(self) -> ScoreSide:
        return next(getattr(self, n) for n in _SECOND_NAMES if getattr(self, n) is not None)

    @property
    def first_name(self) -> str:
        return next(n for n in _FIRST_NAMES if getattr(self, n) is not None)

    @property
    def second_name(self) -> str:
        return next(n for n in _SECOND_NAMES if getattr(self, n) is not None)


class ScoreResponseData(OpenAIBaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(_ListResponse[ScoreResponseData]):
    id: str = Field(default_factory=lambda: _id("score"))


# ---------------------------------------------------------------- /rerank, /v1/rerank, /v2/rerank
class RerankDocumentInput(OpenAIBaseModel):
    """Cohere lets a document be an object with its text under `text`."""

    text: str


class RerankRequest(_PoolingCommon, _ActivationMixin):
    query: str
    documents: list[str | RerankDocumentInput]
    top_n: int | None = Field(default=None, ge=0)  # None or 0: every document
    return_documents: bool = True

    @property
    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankDocument(OpenAIBaseModel):
    text: str


class RerankResult(OpenAIBaseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(OpenAIBaseModel):
    total_tokens: int


class RerankResponse(OpenAIBaseModel):
    """Jina's shape (vLLM's /rerank and /v1/rerank)."""

    id: str = Field(default_factory=lambda: _id("rerank"))
    model: str
    usage: RerankUsage
    results: list[RerankResult]


class CohereApiVersion(OpenAIBaseModel):
    version: str = "2"


class CohereBilledUnits(OpenAIBaseModel):
    search_units: int = 1


class CohereMeta(OpenAIBaseModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits = Field(default_factory=CohereBilledUnits)


class RerankV2Response(RerankResponse):
    """Cohere v2's shape: `results` plus `meta`; vLLM's `model` and `usage` are kept too."""

    meta: CohereMeta = Field(default_factory=CohereMeta)
