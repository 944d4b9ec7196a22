"""A prompt's media joined to its token ids: limits, placeholder spans, M-RoPE positions."""

from __future__ import annotations

from typing import Any

from mono_llm.core.config import ModelConfig
from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.layers.mrope import mrope_prompt_positions
from mono_llm.core.multimodal.inputs import (
    PromptTokenIds,
    check_item_limits,
    expand_placeholders,
    parse_multi_modal_data,
    placeholder_token_id,
)


def attach_media(
    model_config: ModelConfig, token_ids: list[int], mm_data: Any, params: Any
) -> list[int]:
    """The prompt's ids with each image placeholder widened to its image's tokens, carrying
    the items (`PromptTokenIds`); a prompt without items comes back unchanged."""
    items = parse_multi_modal_data(mm_data)
    if not items:
        return token_ids
    limits = model_config.limit_mm_per_prompt
    if not limits:
        raise InvalidRequestError(
            f"The model {model_config.served_model_name!r} does not accept "
            f"{items[0].modality} inputs; send text only or serve a vision-language model.",
            param="messages",
        )
    check_item_limits(items, limits)
    if params is not None and getattr(params, "truncate_prompt_tokens", None) is not None:
        raise InvalidRequestError(
            "truncate_prompt_tokens cannot be used with images (it could cut an image apart).",
            param="truncate_prompt_tokens",
        )
    placeholder = placeholder_token_id(model_config.hf_config)
    if placeholder is None:
        raise InvalidRequestError("This model's config names no image placeholder token.")
    expanded = PromptTokenIds(expand_placeholders(token_ids, items, placeholder), items)
    if mrope_section(model_config.hf_config) is not None:
        merge = int(
            (model_config.hf_config.get("vision_config") or {}).get("spatial_merge_size", 2)
        )
        try:
            positions, delta = mrope_prompt_positions(len(expanded), items, merge)
        except (ValueError, KeyError) as exc:
            raise InvalidRequestError(f"Invalid image input: {exc}") from exc
        expanded.mrope_positions, expanded.mrope_delta = positions, delta
    return expanded


def mrope_section(hf_config: dict[str, Any]) -> list[int] | None:
    """The M-RoPE frequency sections of config.json (Qwen2-VL), or None for plain RoPE."""
    for holder in (hf_config.get("text_config") or {}, hf_config):
        for key in ("rope_parameters", "rope_scaling"):
            rope = holder.get(key)
            if isinstance(rope, dict) and rope.get("mrope_section"):
                return [int(v) for v in rope["mrope_section"]]
    return None
