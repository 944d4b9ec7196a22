"""Thin HTTP layer of POST /tokenize and POST /detokenize."""

from __future__ import annotations

from fastapi import APIRouter, Request

from mono_llm.openai_api.completion.router import ERROR_RESPONSES
from mono_llm.openai_api.server_state import server_state
from mono_llm.openai_api.tokenization.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(tags=["tokenizer"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(request: TokenizeRequest, raw_request: Request) -> TokenizeResponse:
    """Token ids of a prompt, or of messages rendered with the chat template."""
    return await server_state(raw_request).tokenization.tokenize(request)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(request: DetokenizeRequest, raw_request: Request) -> DetokenizeResponse:
    """The text of a list of token ids."""
    return server_state(raw_request).tokenization.detokenize(request)
