"""Tokenize and detokenize with the served model's own tokenizer and chat template, so a
client can count tokens exactly as the completions and chat endpoints will."""

from __future__ import annotations

from mono_llm.openai_api.errors import OpenAIError
from mono_llm.openai_api.model_registry import ModelRegistry
from mono_llm.openai_api.tokenization.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


class TokenizationServing:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        model = self.registry.resolve(request.model)
        tokenizer = model.tokenizer
        if request.messages is not None:
            text = model.chat_template.render(
                tokenizer,
                [m.model_dump(exclude_none=True) for m in request.messages],
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                tools=request.tools,
                chat_template_kwargs=request.chat_template_kwargs,
                request_template=request.chat_template,
            )
            add_special = bool(request.add_special_tokens)
        else:
            text = request.prompt or ""
            add_special = request.add_special_tokens is not False
        tokens = list(tokenizer(text, add_special_tokens=add_special).input_ids)
        token_strs = tokenizer.convert_ids_to_tokens(tokens) if request.return_token_strs else None
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=model.max_model_len,
            tokens=tokens,
            token_strs=token_strs,
        )

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        model = self.registry.resolve(request.model)
        vocab_size = len(model.tokenizer)
        bad = [t for t in request.tokens if t < 0 or t >= vocab_size]
        if bad:
            raise OpenAIError(
                f"Token id {bad[0]} is out of vocabulary (size {vocab_size}).", 400, param="tokens"
            )
        return DetokenizeResponse(prompt=model.tokenizer.decode(request.tokens))
