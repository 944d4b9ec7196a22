"""Which engine outputs become stream chunks, on a scripted engine stream.

Completions and plain chat send one chunk per output that carries tokens, with empty text
when the detokenizer held the bytes back (a token ending inside a UTF-8 character); only an
output with neither text nor tokens is skipped. Where a reasoning or tool-call parser holds
text back, chat sends nothing for that output, and the Responses and Messages APIs never send
an empty text delta.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from mono_llm.core.outputs import CompletionOutput, Logprob, RequestOutput
from mono_llm.openai_api.chat_completion.protocol import ChatCompletionRequest
from mono_llm.openai_api.chat_completion.serving import ChatServing
from mono_llm.openai_api.chat_completion.tool_parsers import get_tool_parser
from mono_llm.openai_api.completion.protocol import CompletionRequest
from mono_llm.openai_api.completion.serving import CompletionServing
from mono_llm.openai_api.engine_requests import PromptInput
from mono_llm.openai_api.messages.serving import MessageBlocks
from mono_llm.openai_api.reasoning import ReasoningStream, get_reasoning_parser
from mono_llm.openai_api.reply_router import ReplySummary, route_reply
from mono_llm.openai_api.responses.output import OutputBuilder

# (text, token ids, finish_reason) per engine step. Step 0 is a chunked-prefill step (no
# token yet); "" with a token is a token that ends inside a character (é is two bytes).
STEPS: list[tuple[str, list[int], str | None]] = [
    ("", [], None),
    ("Hi", [11], None),
    ("", [12], None),
    ("é", [13], None),
    ("", [14], None),
    ("!", [15], "length"),
]
TOKENS = {11: "Hi", 12: "\ufffd", 13: "\ufffd", 14: "\ufffd", 15: "!"}
MODEL = SimpleNamespace(name="m", tokenizer=None)


def _outputs(steps: list[tuple[str, list[int], str | None]], n: int = 1) -> list[RequestOutput]:
    outputs = []
    for text, token_ids, finish in steps:
        completions = [
            CompletionOutput(
                index=index,
                text=text,
                token_ids=list(token_ids),
                logprobs=[{t: Logprob(-1.0, 1, TOKENS[t])} for t in token_ids],
                finish_reason=finish,
            )
            for index in range(n)
        ]
        outputs.append(RequestOutput("r", "p", [1, 2], None, completions, finish is not None))
    return outputs


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def _collect(chunks: AsyncIterator[Any]) -> list[Any]:
    async def run() -> list[Any]:
        return [chunk async for chunk in chunks]

    return asyncio.run(run())


def _completion_chunks(**fields: Any) -> list[dict[str, Any]]:
    request = CompletionRequest(model="m", prompt="p", stream=True, **fields)
    serving = CompletionServing(None)  # type: ignore[arg-type]  # no model lookup here
    n = request.n
    merged = _aiter([(0, output) for output in _outputs(STEPS, n)])
    prompts = [PromptInput(token_ids=[1, 2], text="p")]
    chunks = _collect(serving._chunks(request, MODEL, "cmpl-1", prompts, merged))  # type: ignore[arg-type]
    return [chunk.model_dump() for chunk in chunks]


def test_completion_sends_a_chunk_per_output_with_tokens() -> None:
    chunks = _completion_chunks(logprobs=0, stream_options={"include_usage": True})
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    assert [c["text"] for c in choices] == ["Hi", "", "é", "", "!"]
    assert [c["logprobs"]["tokens"] for c in choices] == [[TOKENS[t]] for t in range(11, 16)]
    assert [c["finish_reason"] for c in choices] == [None] * 4 + ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_completion_n_choices_and_echo_keep_their_chunks() -> None:
    chunks = _completion_chunks(n=2, echo=True)
    for index in (0, 1):
        texts = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == index]
        # The prefill step carries the echoed prompt; then one chunk per token.
        assert texts == ["p", "Hi", "", "é", "", "!"]


def _chat_events(serving: ChatServing, **fields: Any) -> list[dict[str, Any]]:
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **fields
    )
    prompt = PromptInput(token_ids=[1, 2], text="<|user|>hi<|assistant|>")
    events = _collect(serving._chunks(request, MODEL, "chat-1", prompt, _aiter(_outputs(STEPS))))  # type: ignore[arg-type]
    return [json.loads(event.removeprefix("data: ")) for event in events]


def _deltas(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event["choices"][0] for event in events if event["choices"]]


def test_chat_sends_an_empty_content_delta_per_output_with_tokens() -> None:
    serving = ChatServing(None, None)  # type: ignore[arg-type]
    events = _chat_events(serving, logprobs=True, stream_options={"include_usage": True})
    choices = _deltas(events)
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["delta"] for c in choices[1:]] == [
        {"content": text} for text in ("Hi", "", "é", "", "!")
    ]
    assert [len(c["logprobs"]["content"]) for c in choices[1:]] == [1] * 5
    assert choices[-1]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5


def test_chat_with_a_reasoning_parser_sends_nothing_for_held_back_text() -> None:
    serving = ChatServing(None, None, reasoning_parser=get_reasoning_parser("qwen3"))  # type: ignore[arg-type]
    choices = _deltas(_chat_events(serving))
    contents = [c["delta"].get("content") for c in choices[1:]]
    assert "" not in contents and "".join(c for c in contents if c) == "Hié!"


def test_chat_with_a_tool_parser_sends_nothing_for_held_back_text() -> None:
    serving = ChatServing(None, None, tool_parser=get_tool_parser("hermes"))  # type: ignore[arg-type]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    choices = _deltas(_chat_events(serving, tools=tools))
    contents = [c["delta"].get("content") for c in choices[1:]]
    assert "" not in contents and "".join(c for c in contents if c) == "Hié!"
    assert choices[-1]["finish_reason"] == "length"


def _route(sink: Any, *, reasoning: bool = False) -> ReplySummary:
    summary = ReplySummary()
    splitter = ReasoningStream(get_reasoning_parser("qwen3")) if reasoning else None

    async def run() -> None:
        routed = route_reply(
            _aiter(_outputs(STEPS)), sink, summary, reasoning=splitter, forced=None,
            tool_parser=None,
        )  # fmt: skip
        async for _ in routed:
            pass

    asyncio.run(run())
    return summary


def test_responses_and_messages_never_send_an_empty_text_delta() -> None:
    for reasoning in (False, True):
        builder = OutputBuilder({"output": [], "status": "in_progress"})
        assert _route(builder, reasoning=reasoning).output_tokens == 5
        deltas = [e["delta"] for e in builder.take_events() if e["type"].endswith(".delta")]
        assert deltas == ["Hi", "é", "!"]
        blocks = MessageBlocks({"content": []})
        _route(blocks, reasoning=reasoning)
        texts = [d["delta"]["text"] for k, d in blocks.take_events() if k == "content_block_delta"]
        assert texts == ["Hi", "é", "!"]
