"""The pieces of the process split and of async scheduling that need no second process or GPU:
messages decode into the engine's own types, errors keep their HTTP meaning, and a launched
decode step is matched to the next batch only when that batch is its sequences in order."""

from __future__ import annotations

import numpy as np

from mono_llm.core.engine import messages as msg
from mono_llm.core.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    PromptTooLongError,
)
from mono_llm.core.outputs import CompletionOutput, Logprob, RequestOutput, SchedulerStats
from mono_llm.core.pooling_params import PoolingParams
from mono_llm.core.sampling_params import (
    RequestOutputKind,
    SamplingParams,
    StructuredOutputsParams,
)
from mono_llm.core.worker.batch import LogitsWanted, SequenceSlice
from mono_llm.core.worker.decode_speculation import DecodeSpeculation
from mono_llm.core.worker.step_inputs import StepInputs


def test_add_request_round_trips_sampling_and_pooling_params() -> None:
    params = SamplingParams(
        temperature=0.3,
        stop=["\n\n"],
        logit_bias={7: -1.5},
        structured_outputs=StructuredOutputsParams(json={"type": "object"}),
        output_kind=RequestOutputKind.DELTA,
        seed=4,
    ).clone(all_stop_token_ids={2, 9})
    request = msg.AddRequest("r1", [1, 2, 3], "hi", sampling=params, priority=-2, arrival_time=5.0)
    back = msg.decode(msg.encode(request), msg.AddRequest)
    assert back == request and back.params == params
    assert back.params.output_kind is RequestOutputKind.DELTA
    assert back.params.all_stop_token_ids == {2, 9}
    pooled = msg.AddRequest("p", [4], pooling=PoolingParams(task="embed", dimensions=8))
    assert msg.decode(msg.encode(pooled), msg.AddRequest).params == pooled.params


def test_output_batch_round_trips_outputs_with_logprobs() -> None:
    out = RequestOutput(
        "r1",
        None,
        [],
        [None, {5: Logprob(-0.5, 1, "a")}],
        [CompletionOutput(0, "x", [8], -0.1, [{8: Logprob(-0.1, 1, "x")}], "stop", "\n")],
        True,
    )
    batch = msg.OutputBatch([out], [msg.RequestError("r2", "invalid", "bad", "n")],
                            SchedulerStats(num_running_reqs=3), adds_seen=7)  # fmt: skip
    back = msg.decode(msg.encode(batch), msg.OutputBatch)
    assert back.outputs == [out] and back.adds_seen == 7
    assert back.stats.num_running_reqs == 3
    assert back.outputs[0].outputs[0].logprobs[0][8].decoded_token == "x"


def test_errors_keep_their_meaning_across_the_boundary() -> None:
    cases = [
        (PromptTooLongError(10, 8), InvalidRequestError, "prompt"),
        (InvalidRequestError("no", param="n"), InvalidRequestError, "n"),
        (EngineOverloadedError("full"), EngineOverloadedError, None),
        (RuntimeError("boom"), EngineError, None),
    ]
    for exc, cls, param in cases:
        batch = msg.OutputBatch(errors=[msg.error_to_message("r", exc)])
        wire = msg.decode(msg.encode(batch), msg.OutputBatch).errors[0]
        back = msg.message_to_error(wire)
        assert type(back) is cls, (exc, back)
        if isinstance(back, InvalidRequestError):
            assert back.param == param and back.message == str(exc)
    assert "boom" in str(msg.message_to_error(msg.error_to_message("r", RuntimeError("boom"))))


def _speculation(tables: list[list[int]], computed: list[int]) -> DecodeSpeculation:
    n = len(tables)
    zeros = np.zeros(n, np.int64)
    inputs = StepInputs(zeros, zeros, zeros, np.arange(n + 1, dtype=np.int32),
                        np.ones(n, np.int32), np.zeros((n, 4), np.int32), zeros, 1, 1)  # fmt: skip
    return DecodeSpeculation(inputs, n, tables, [len(t) for t in tables], computed, launched=True)


def test_launched_step_matches_its_sequences_in_order_with_some_left_out() -> None:
    tables = [[1, 2], [3], [4, 5, 6]]
    spec = _speculation(tables, [20, 7, 40])

    def slices(*picks: int, **changes) -> list[SequenceSlice]:
        computed = {0: 20, 1: 7, 2: 40}
        return [
            SequenceSlice(
                [9],
                changes.get("computed", computed)[i],
                tables[i],
                changes.get("logits", LogitsWanted.LAST),
            )
            for i in picks
        ]

    assert spec.launched_rows(slices(0, 1, 2)) == [0, 1, 2]
    assert spec.launched_rows(slices(0, 2)) == [0, 2]  # the middle one finished
    assert spec.launched_rows(slices(2)) == [2]
    assert spec.launched_rows(slices(2, 0)) is None  # another order
    assert spec.launched_rows(slices(0, 0)) is None
    assert spec.launched_rows(slices(0, 1, computed={0: 20, 1: 8, 2: 40})) is None
    assert spec.launched_rows(slices(0, logits=LogitsWanted.ALL)) is None
    other = SequenceSlice([9], 20, [1, 2], LogitsWanted.LAST)  # equal list, another sequence
    assert spec.launched_rows([other]) is None
    prefill = SequenceSlice([9, 9], 20, tables[0], LogitsWanted.LAST)
    assert spec.launched_rows([prefill]) is None
    tables[1].append(11)  # the sequence got a new block since: not the launched step
    assert spec.launched_rows(slices(1)) is None
