"""Reasoning parsers (`--reasoning-parser`): split a reasoning model's thinking from its answer.

Reasoning models write their chain of thought between `<think>` and `</think>` before the
answer. The parser named by --reasoning-parser returns the two apart, so chat replies carry
`reasoning_content` (and `reasoning`) beside `content`, and the Responses API a `reasoning`
item before the message; tool calls and JSON are read from the answer only.

- deepseek_r1: the chat template usually writes `<think>` into the prompt, so the reply starts
  inside the reasoning; everything up to `</think>` is reasoning (all of it when the reply
  never closes the block, e.g. cut by max_tokens).
- qwen3: reasoning only when the reply opens with `<think>` (thinking can be switched off,
  and the template then writes an empty block into the prompt); otherwise all is answer.

For both, a prompt that ends with `<think>` means the reply starts inside the block, and one
that ends with `</think>` (thinking switched off) that the reply is all answer.

The non-streamed split runs the streaming splitter over the whole text, so the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReasoningParser:
    """One reasoning format: its markers and whether the reply starts inside the block."""

    name: str
    start: str = "<think>"
    end: str = "</think>"
    starts_inside: bool = False  # the opening marker is in the prompt, not the reply

    def split(self, text: str, prompt: str | None = None) -> tuple[str | None, str]:
        """(reasoning or None, answer) of a finished reply to `prompt`."""
        stream = ReasoningStream(self, prompt)
        reasoning, content = stream.feed(text)
        rest_reasoning, rest_content = stream.finish()
        reasoning += rest_reasoning
        content += rest_content
        return (reasoning if stream.saw_reasoning else None), content


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class ReasoningStream:
    """Splits a reply arriving in pieces; holds back text that may be half a marker."""

    def __init__(self, parser: ReasoningParser, prompt: str | None = None) -> None:
        self.parser = parser
        self.phase = "start"  # start | reasoning | answer
        self.pending = ""
        self.saw_reasoning = False
        self.reasoning_text = ""  # all reasoning sent so far
        tail = prompt.rstrip() if prompt is not None else ""
        if tail.endswith(parser.end):
            # The template closed the block itself (thinking switched off): all is answer.
            self.phase = "answer"
        elif tail.endswith(parser.start):
            # The template opened the block: the reply starts inside it.
            self._enter_reasoning()

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning, answer) text that can be sent now."""
        self.pending += delta
        reasoning, answer = "", ""
        if self.phase == "start":
            head = self.pending.lstrip()
            if head.startswith(self.parser.start):
                self.pending = head[len(self.parser.start) :]
                self._enter_reasoning()
            elif self.parser.start.startswith(head):  # still maybe the opening marker
                return "", ""
            elif self.parser.starts_inside:
                self._enter_reasoning()
            else:
                self.phase = "answer"
        if self.phase == "reasoning":
            end = self.pending.find(self.parser.end)
            if end >= 0:
                reasoning = self.pending[:end]
                self.pending = self.pending[end + len(self.parser.end) :]
                self.phase = "answer"
            else:
                keep = _partial_suffix(self.pending, self.parser.end)
                cut = len(self.pending) - keep
                reasoning, self.pending = self.pending[:cut], self.pending[cut:]
        if self.phase == "answer":
            answer, self.pending = self.pending, ""
        self.reasoning_text += reasoning
        return reasoning, answer

    def finish(self) -> tuple[str, str]:
        """(reasoning, answer) still held back when the reply ends."""
        rest, self.pending = self.pending, ""
        if self.phase == "reasoning" or (self.phase == "start" and self.parser.starts_inside):
            self.saw_reasoning = True
            self.reasoning_text += rest
            return rest, ""
        return "", rest

    def _enter_reasoning(self) -> None:
        self.phase = "reasoning"
        self.saw_reasoning = True

    @property
    def in_answer(self) -> bool:
        return self.phase == "answer"


REASONING_PARSERS: dict[str, ReasoningParser] = {
    parser.name: parser
    for parser in (
        ReasoningParser("deepseek_r1", starts_inside=True),
        ReasoningParser("qwen3"),
    )
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown --reasoning-parser {name!r}; choose from {', '.join(REASONING_PARSERS)}"
        ) from None


__all__ = ["REASONING_PARSERS", "ReasoningParser", "ReasoningStream", "get_reasoning_parser"]
