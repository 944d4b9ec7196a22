"""The messages between the API process and the engine-core process, msgspec-encoded.

Every ZeroMQ message is two frames: a one-byte kind and a msgpack body. msgspec decodes the
body straight into the engine's own dataclasses (`SamplingParams`, `RequestOutput`), so
nothing is pickled and a malformed message fails to decode instead of running code.

API -> engine: ADD (`AddRequest`), ABORT (a list of request ids), STOP.
Engine -> API: READY (`EngineReady`, once the model is loaded), OUTPUTS (`OutputBatch`, one per
step that produced something), FATAL (the loop died; the text of the error), STOPPED (after a
clean stop, every unfinished request having been sent its "abort" output).
"""

from __future__ import annotations

from typing import Any

import msgspec

from mono_llm.core.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
)
from mono_llm.core.outputs import RequestOutput, SchedulerStats
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.sampling_params import SamplingParams

ADD = b"A"
ABORT = b"X"
STOP = b"S"
READY = b"R"
OUTPUTS = b"O"
FATAL = b"F"
STOPPED = b"D"


class AddRequest(msgspec.Struct, array_like=True, omit_defaults=True):
    """A tokenized, validated request (the API process did the tokenizing)."""

    request_id: str
    prompt_token_ids: list[int]
    prompt_text: str | None = None
    sampling: SamplingParams | None = None
    pooling: PoolingParams | None = None
    priority: int = 0
    arrival_time: float = 0.0
    # Encoder–decoder models (in-process only): the encoder input, e.g. Whisper's features.
    encoder_features: Any = None

    @property
    def params(self) -> SamplingParams | PoolingParams:
        params = self.sampling if self.sampling is not None else self.pooling
        assert params is not None
        return params

    def add_to(self, engine: Any) -> None:
        """Queue this request on an EngineCore (in a thread or in the engine process); raises
        what `EngineCore.add_request` raises for a request it refuses."""
        engine.add_request(
            self.request_id,
            self.prompt_token_ids,
            self.params,
            arrival_time=self.arrival_time,
            priority=self.priority,
            prompt_text=self.prompt_text,
            prompt_token_ids=self.prompt_token_ids,
            encoder_features=self.encoder_features,
        )


class RequestError(msgspec.Struct, array_like=True):
    """A request the engine refused or dropped, with what the API needs to answer it."""

    request_id: str
    kind: str  # "invalid" (400), "overloaded" (503), "failed" (500)
    message: str
    param: str | None = None


class EngineReady(msgspec.Struct, array_like=True):
    """What the API process needs from the loaded model to validate requests itself."""

    vocab_size: int
    num_blocks: int
    block_size: int


class OutputBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    """Everything one engine iteration produced. `outputs` carry no prompt (text or token
    ids): the API process has it and fills it back in, so a step's message stays small."""

    outputs: list[RequestOutput] = []
    errors: list[RequestError] = []
    stats: SchedulerStats | None = None
    adds_seen: int = 0  # ADD messages the engine has taken so far (for the waiting count)


def error_to_message(request_id: str, exc: BaseException) -> RequestError:
    if isinstance(exc, InvalidRequestError):
        return RequestError(request_id, "invalid", exc.message, exc.param)
    if isinstance(exc, EngineOverloadedError):
        return RequestError(request_id, "overloaded", str(exc))
    return RequestError(request_id, "failed", f"The request failed inside the engine: {exc!r}")


def message_to_error(error: RequestError) -> Exception:
    if error.kind == "invalid":
        return InvalidRequestError(error.message, param=error.param)
    if error.kind == "overloaded":
        return EngineOverloadedError(error.message)
    return EngineError(error.message)


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {
    cls: msgspec.msgpack.Decoder(cls)
    for cls in (AddRequest, OutputBatch, EngineReady, list[str], str)  # type: ignore[misc]
}


def decode(body: bytes, cls: Any) -> Any:
    return _decoders[cls].decode(body)


__all__ = [
    "ABORT",
    "ADD",
    "FATAL",
    "OUTPUTS",
    "READY",
    "STOP",
    "STOPPED",
    "AddRequest",
    "EngineReady",
    "OutputBatch",
    "RequestError",
    "decode",
    "encode",
    "error_to_message",
    "message_to_error",
]
