"""GET /v1/models and GET /v1/models/{model}: every served model, under its first name."""

from __future__ import annotations

from fastapi import APIRouter, Request

from mono_llm.openai_api.completion.router import ERROR_RESPONSES
from mono_llm.openai_api.protocol import ModelCard, ModelList, ModelPermission
from mono_llm.openai_api.served_models import ServedModel
from mono_llm.openai_api.server_state import server_state

router = APIRouter(tags=["models"])


def model_card(model: ServedModel, name: str | None = None) -> ModelCard:
    return ModelCard(
        id=name or model.name,
        created=model.created,
        root=model.root,
        max_model_len=model.max_model_len,
        parent=None if name in (None, model.name) else model.name,
        permission=[ModelPermission()],
    )


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(raw_request: Request) -> ModelList:
    """The served models (aliases given with --served-model-name are listed too)."""
    cards = []
    for model in server_state(raw_request).registry:
        cards.extend(model_card(model, name) for name in model.names)
    return ModelList(data=cards)


@router.get("/v1/models/{model_name:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def retrieve_model(model_name: str, raw_request: Request) -> ModelCard:
    """One served model; 404 for a name this server does not serve."""
    model = server_state(raw_request).registry.resolve(model_name)
    return model_card(model, model_name)
