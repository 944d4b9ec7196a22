"""Builds a response's output items and OpenAI's stream events from generated pieces.

Streamed and non-streamed responses are made by the same builder (the non-streamed one just
keeps the final `response`), so both carry the same items. The event order is OpenAI's:

    response.created, response.in_progress,
    per item: response.output_item.added,
      reasoning: response.content_part.added, response.reasoning_text.delta...,
                 response.reasoning_text.done, response.content_part.done
      message:   response.content_part.added, response.output_text.delta...,
                 response.output_text.done, response.content_part.done
      function_call: response.function_call_arguments.delta...,
                 response.function_call_arguments.done
    response.output_item.done,
    response.completed (or response.incomplete when cut by max_output_tokens)

Every event carries a `sequence_number` that counts from 0.
"""

from __future__ import annotations

import copy
from typing import Any

from mono_llm.openai_api.responses.protocol import new_id


class OutputBuilder:
    """The output items of one response, and the events that built them."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response  # the `response` object; its output fills as items close
        self.events: list[dict[str, Any]] = []
        self._sequence = 0
        self._open: dict[str, Any] | None = None  # the item being generated
        self._open_text = ""

    # ---------------------------------------------------------------- events
    def _emit(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1

    def take_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.response)

    def start(self) -> None:
        self.response["status"] = "in_progress"
        self._emit("response.created", response=self._snapshot())
        self._emit("response.in_progress", response=self._snapshot())

    # ---------------------------------------------------------------- items
    @property
    def _index(self) -> int:
        return len(self.response["output"])

    def _add_item(self, item: dict[str, Any]) -> None:
        self._open, self._open_text = item, ""
        self._emit("response.output_item.added", output_index=self._index, item=copy.deepcopy(item))

    def _part_type(self) -> str:
        return (
            "reasoning_text" if self._open and self._open["type"] == "reasoning" else "output_text"
        )

    def _part(self, text: str) -> dict[str, Any]:
        if self._part_type() == "reasoning_text":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _ensure(self, kind: str) -> None:
        if self._open is not None and self._open["type"] == kind:
            return
        self.close_item()
        if kind == "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [],
                    "encrypted_content": None, "status": "in_progress"}  # fmt: skip
        else:
            item = {"id": new_id("msg"), "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []}  # fmt: skip
        self._add_item(item)
        self._emit(
            "response.content_part.added",
            item_id=item["id"],
            output_index=self._index,
            content_index=0,
            part=self._part(""),
        )

    def reasoning(self, delta: str) -> None:
        if not delta:
            return
        self._ensure("reasoning")
        assert self._open is not None
        self._open_text += delta
        self._emit("response.reasoning_text.delta", item_id=self._open["id"],
                   output_index=self._index, content_index=0, delta=delta)  # fmt: skip

    def text(self, delta: str) -> None:
        if not delta:
            return
        self._ensure("message")
        assert self._open is not None
        self._open_text += delta
        self._emit("response.output_text.delta", item_id=self._open["id"],
                   output_index=self._index, content_index=0, delta=delta, logprobs=[])  # fmt: skip

    def call_start(self, name: str) -> None:
        """Open a function_call item whose arguments stream next."""
        self.close_item()
        self._add_item(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "call_id": new_id("call"),
                "name": name,
                "arguments": "",
                "status": "in_progress",
            }
        )

    def call_arguments(self, delta: str) -> None:
        if not delta:
            return
        assert self._open is not None and self._open["type"] == "function_call"
        self._open_text += delta
        self._emit("response.function_call_arguments.delta", item_id=self._open["id"],
                   output_index=self._index, delta=delta)  # fmt: skip

    def call(self, name: str, arguments: str) -> None:
        """A whole function call, known at once."""
        self.call_start(name)
        self.call_arguments(arguments)
        self.close_item()

    @property
    def in_call(self) -> bool:
        return self._open is not None and self._open["type"] == "function_call"

    def close_item(self, status: str = "completed") -> None:
        item = self._open
        if item is None:
            return
        self._open = None
        index, text = self._index, self._open_text
        item["status"] = status
        if item["type"] == "function_call":
            item["arguments"] = text
            self._emit("response.function_call_arguments.done", item_id=item["id"],
                       output_index=index, arguments=text)  # fmt: skip
        else:
            reasoning = item["type"] == "reasoning"
            part = ({"type": "reasoning_text", "text": text} if reasoning else
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []})  # fmt: skip
            done = "response.reasoning_text.done" if reasoning else "response.output_text.done"
            extra = {} if reasoning else {"logprobs": []}
            self._emit(done, item_id=item["id"], output_index=index, content_index=0,
                       text=text, **extra)  # fmt: skip
            self._emit("response.content_part.done", item_id=item["id"], output_index=index,
                       content_index=0, part=part)  # fmt: skip
            item["content"] = [part]
        self._emit("response.output_item.done", output_index=index, item=copy.deepcopy(item))
        self.response["output"].append(item)

    # ---------------------------------------------------------------- end
    def finish(self, *, incomplete: bool, usage: dict[str, Any]) -> None:
        """Close the open item and send response.completed (or .incomplete)."""
        status = "incomplete" if incomplete else "completed"
        self.close_item(status)
        if not self.response["output"]:
            # Nothing generated (an immediate stop): still one assistant message, so clients
            # that read output[0] find one.
            self._ensure("message")
            self.close_item(status)
        self.response["status"] = status
        self.response["usage"] = usage
        if incomplete:
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
        self._emit(f"response.{status}", response=self._snapshot())

    def fail(self, code: str, message: str, param: str | None) -> None:
        """An error mid-generation: OpenAI's `error` event, then response.failed."""
        self._emit("error", code=code, message=message, param=param)
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        self._emit("response.failed", response=self._snapshot())
