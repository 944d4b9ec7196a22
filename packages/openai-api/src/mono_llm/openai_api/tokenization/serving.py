"""Tokenize and detokenize with the served model's own tokenizer and chat template, so a
client can count tokens exactly as the completions and chat endpoints will."""

from __future__ import annotations

import asyncio

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.media import MediaInputs, image_limit
from mono_llm.openai_api.served_models import ServedModel, ServedModels
from mono_llm.openai_api.serving_base import ServingBase
from mono_llm.openai_api.tokenization.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


class TokenizationServing(ServingBase):
    def __init__(self, registry: ServedModels, media: MediaInputs | None = None) -> None:
        super().__init__(registry)
        self.media = media

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """With messages for a vision-language model, the images are fetched and each image
        placeholder counts as the tokens its image fills, as in a chat request."""
        model = self.resolve_model(request.model)
        tokenizer = model.tokenizer
        image_urls: list[str] | None = None
        if request.messages is not None:
            takes_images = self.media is not None and image_limit(model) > 0
            image_urls = [] if takes_images else None
            # The template renders in a worker process (with a deadline): wait off the loop.
            text = await asyncio.to_thread(
                model.chat_template.render,
                tokenizer,
                [m.model_dump(exclude_none=True) for m in request.messages],
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                tools=request.tools,
                chat_template_kwargs=request.chat_template_kwargs,
                request_template=request.chat_template,
                images=image_urls,
                image_placeholder=self.media.placeholder_text(model) if takes_images else "",
            )
            add_special = bool(request.add_special_tokens)
        else:
            text = request.prompt or ""
            add_special = request.add_special_tokens is not False
        tokens = list(tokenizer(text, add_special_tokens=add_special).input_ids)
        if image_urls:
            assert self.media is not None
            images = await self.media.load(model, image_urls)
            tokens = _expand_images(tokens, model, [int(image.num_tokens) for image in images])
        token_strs = tokenizer.convert_ids_to_tokens(tokens) if request.return_token_strs else None
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=model.max_model_len,
            tokens=tokens,
            token_strs=token_strs,
        )

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        model = self.resolve_model(request.model)
        vocab_size = len(model.tokenizer)
        bad = [t for t in request.tokens if t < 0 or t >= vocab_size]
        if bad:
            raise OpenAIError(
                f"Token id {bad[0]} is out of vocabulary (size {vocab_size}).", 400, param="tokens"
            )
        return DetokenizeResponse(prompt=model.tokenizer.decode(request.tokens))


def _expand_images(tokens: list[int], model: ServedModel, sizes: list[int]) -> list[int]:
    """Each image placeholder token widened to the tokens its image fills, in order."""
    config = model.engine.model_config.hf_config
    image_id = config.get("image_token_id", config.get("image_token_index"))
    out: list[int] = []
    remaining = iter(sizes)
    for token in tokens:
        if token == image_id:
            out.extend([token] * next(remaining, 1))
        else:
            out.append(token)
    return out
