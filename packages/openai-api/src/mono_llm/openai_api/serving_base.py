"""What every endpoint family's serving class shares.

A serving class turns one validated protocol request into engine calls and back. They all
hold the served models and the metrics, count usage the same way (prompt / completion tokens,
prefix-cache hits when `--enable-prompt-tokens-details` is on), read `stream_options` the same
way, and end a server-sent-event stream the same way: an error after the status line went out
is reported in-band as an OpenAI error event, the engine streams are closed (which aborts their
requests), and `data: [DONE]` comes last. `ServingBase` holds that once; a family's serving
module keeps only what is its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from pydantic import BaseModel

from mono_llm.openai_api.errors import from_exception
from mono_llm.openai_api.metrics import ServerMetrics
from mono_llm.openai_api.protocol import UsageInfo, usage_info
from mono_llm.openai_api.served_models import ServedModel, ServedModels
from mono_llm.openai_api.streaming import SSE_DONE, sse_event


class ServingBase:
    """Served models, metrics and the usage / streaming code every endpoint shares."""

    def __init__(
        self,
        registry: ServedModels,
        metrics: ServerMetrics | None = None,
        *,
        prompt_tokens_details: bool = False,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.prompt_tokens_details = prompt_tokens_details  # report prefix-cache hits

    def resolve_model(self, name: str | None) -> ServedModel:
        """The served model a request names (404 for an unknown name)."""
        return self.registry.resolve(name)

    # ------------------------------------------------------------------ usage

    def cached_tokens(self, outputs: Iterable[Any]) -> int | None:
        """Prompt tokens served from the prefix cache, when the server reports them."""
        if not self.prompt_tokens_details:
            return None
        return sum(o.num_cached_tokens for o in outputs)

    def usage(
        self, prompt_tokens: int, completion_tokens: int, outputs: Iterable[Any] = ()
    ) -> UsageInfo:
        """The `usage` object; `outputs` (engine outputs) give the cached-token count."""
        return usage_info(prompt_tokens, completion_tokens, self.cached_tokens(outputs))

    @staticmethod
    def stream_usage(request: Any) -> tuple[bool, bool]:
        """(include_usage, continuous_usage_stats) from a request's `stream_options`."""
        options = getattr(request, "stream_options", None)
        include = bool(options and options.include_usage)
        return include, include and bool(options and options.continuous_usage_stats)

    # ------------------------------------------------------------------ streaming

    @staticmethod
    async def sse_stream(
        events: AsyncIterator[BaseModel | str], close: Callable[[], Awaitable[Any]]
    ) -> AsyncGenerator[str, None]:
        """The SSE body of a stream of chunks (pydantic models, or events already encoded).

        An exception after the first byte cannot change the status code any more, so it is
        sent as an OpenAI-shaped error event; `close()` runs in every case (closing the
        engine streams aborts what they still run); `data: [DONE]` ends the stream.
        """
        try:
            async for event in events:
                yield event if isinstance(event, str) else sse_event(event)
        except Exception as exc:  # the status line is sent already: report in-band
            yield sse_event(from_exception(exc).to_response())
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
            await close()
        yield SSE_DONE
