"""`use_beam_search` on /v1/completions and /v1/chat/completions (vLLM's extra parameter).

The search itself is the engine package's (`mono_llm.core.beam_search`): every step runs the
live beams as one-token engine requests. Here it runs for one prompt and its best `n`
hypotheses come back as one finished `RequestOutput` with `n` outputs, so the endpoints
build their choices exactly as for sampled outputs. The beam width is `best_of` when given
(at least `n`), else `n`; `length_penalty` divides a hypothesis's log-probability by its
length to that power. Beam search is not streamed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from mono_llm.core.beam_search import BeamSearchParams, beam_search_async, step_params
from mono_llm.core.outputs import CompletionOutput, RequestOutput
from mono_llm.openai_api.engine_requests import PromptInput, start_engine_request
from mono_llm.openai_api.errors import OpenAIError

if TYPE_CHECKING:
    from mono_llm.openai_api.protocol import SamplingExtras
    from mono_llm.openai_api.served_models import ServedModel


def check_beam_search_request(request: SamplingExtras) -> None:
    """400s for what beam search does not combine with."""
    if not request.use_beam_search:
        return
    if request.stream:
        raise OpenAIError("use_beam_search cannot be streamed.", 400, param="stream")
    if getattr(request, "logprobs", None):
        raise OpenAIError("use_beam_search does not return logprobs.", 400, param="logprobs")
    if request.best_of is not None and request.best_of < request.n:
        raise OpenAIError("best_of must be at least n.", 400, param="best_of")


async def start_beam_search(
    model: ServedModel,
    prompt: PromptInput,
    request: SamplingExtras,
    max_tokens: int,
    request_id: str,
) -> AsyncIterator[RequestOutput]:
    """Run the search for one prompt; its best `n` hypotheses as one finished output."""
    width = max(request.n, request.best_of or request.n)
    params = BeamSearchParams(
        beam_width=width,
        max_tokens=max_tokens,
        ignore_eos=request.ignore_eos,
        length_penalty=request.length_penalty,
    )
    one_token = step_params(params)

    async def next_token_logprobs(token_ids: list[int]) -> Any:
        step_id = f"{request_id}-beam-{uuid.uuid4().hex[:8]}"
        stream = await start_engine_request(model, PromptInput(token_ids, None), one_token, step_id)
        last = None
        try:
            async for output in stream:
                last = output
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        assert last is not None and last.outputs[0].logprobs
        return last.outputs[0].logprobs[0]

    async def step(token_lists: list[list[int]]) -> list[Any]:
        return list(await asyncio.gather(*(next_token_logprobs(t) for t in token_lists)))

    # The end-of-sequence ids from the engine's API-side face, which exists whether the engine
    # steps in this process or its own (a data-parallel model: its first replica's).
    replicas = getattr(model.engine, "replicas", None)
    eos = set((replicas[0] if replicas else model.engine).processor.eos_token_ids)
    sequences = await beam_search_async(prompt.token_ids, params, eos, step)
    outputs = [
        CompletionOutput(
            index=index,
            text=model.tokenizer.decode(
                sequence.output_tokens, skip_special_tokens=request.skip_special_tokens
            ),
            token_ids=sequence.output_tokens,
            cumulative_logprob=sequence.cum_logprob,
            finish_reason=sequence.finish_reason,
        )
        for index, sequence in enumerate(sequences[: request.n])
    ]
    return _once(
        RequestOutput(request_id, prompt.text, prompt.token_ids, None, outputs, finished=True)
    )


async def _once(output: RequestOutput) -> AsyncGenerator[RequestOutput, None]:
    yield output
