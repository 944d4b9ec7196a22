"""Request and response models of the Responses API (OpenAI's field names and shapes).

Output items, events and stored items are plain dicts built by `output.py`, because their
shapes are many small unions; the request is a pydantic model so that bad bodies are 400s
that name the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import Field, field_validator

from mono_llm.openai_api.protocol import OpenAIBaseModel

# Bounds on one request, so a body cannot make the server build an unbounded conversation.
MAX_INPUT_ITEMS = 1024
MAX_TOOLS = 128
MAX_METADATA_KEYS = 16


def new_id(prefix: str) -> str:
    """OpenAI-style object ids: `resp_...`, `msg_...`, `fc_...`, `call_...`, `rs_...`."""
    return f"{prefix}_{uuid.uuid4().hex}"


class TextFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIBaseModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ReasoningConfig(OpenAIBaseModel):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(OpenAIBaseModel):
    """The body of POST /v1/responses (fields this server does not act on are accepted and
    echoed where OpenAI echoes them)."""

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(default="")
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = "disabled"
    # vLLM's extras, accepted through the openai client's extra_body.
    seed: int | None = None
    top_k: int | None = None
    request_id: str | None = None

    @field_validator("input")
    @classmethod
    def _bounded_input(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list) and len(value) > MAX_INPUT_ITEMS:
            raise ValueError(f"input holds {len(value)} items; at most {MAX_INPUT_ITEMS}.")
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list.")
        return value

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata holds {len(value)} keys; at most {MAX_METADATA_KEYS}.")
        return value


def usage(input_tokens: int, output_tokens: int, cached: int, reasoning: int) -> dict[str, Any]:
    """ResponseUsage with its details (cached prompt tokens, reasoning tokens)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    request: ResponsesRequest,
    response_id: str,
    model: str,
    *,
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage_info: dict[str, Any] | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """The `response` object, echoing the request's settings as OpenAI does."""
    text = request.text.model_dump(by_alias=True, exclude_none=True) if request.text else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": status,
        "background": request.background,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "model": model,
        "output": output or [],
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "reasoning": request.reasoning.model_dump() if request.reasoning else None,
        "store": request.store,
        "temperature": request.temperature,
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice,
        "tools": request.tools or [],
        "top_p": request.top_p,
        "truncation": request.truncation,
        "usage": usage_info,
        "user": request.user,
    }
