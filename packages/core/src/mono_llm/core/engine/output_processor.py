"""Building vLLM-shaped outputs from request state: `RequestOutput`s (CUMULATIVE, DELTA,
FINAL_ONLY) for generation, `PoolingRequestOutput`s for pooling."""

from __future__ import annotations

import time

from mono_llm.core.engine.request import Request, Sequence
from mono_llm.core.outputs import (
    CompletionOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
)
from mono_llm.core.sampling_params import RequestOutputKind


def _completion(seq: Sequence, index: int, request: Request, delta: bool) -> CompletionOutput:
    finished = seq.is_finished
    params = seq.sampling_params
    text = seq.detokenizer.visible_text(finished) if seq.detokenizer is not None else ""
    wants_logprobs = params is not None and params.logprobs is not None
    if delta:
        # Slice only what is new: copying whole outputs every step would be quadratic.
        sent_text = request.sent_text_len[seq.index]
        sent_tokens = request.sent_tokens[seq.index]
        request.sent_text_len[seq.index] = len(text)
        request.sent_tokens[seq.index] = seq.num_output_tokens
        text = text[sent_text:]
        tokens = seq.token_ids[seq.num_prompt_tokens + sent_tokens :]
        logprobs = seq.logprobs[sent_tokens:] if wants_logprobs else None
    else:
        tokens = seq.output_token_ids
        logprobs = list(seq.logprobs) if wants_logprobs else None
    return CompletionOutput(
        index=index,
        text=text,
        token_ids=tokens,
        cumulative_logprob=seq.cumulative_logprob if logprobs is not None else None,
        logprobs=logprobs,
        finish_reason=seq.status.finish_reason,
        stop_reason=seq.stop_reason,
    )


def make_request_output(request: Request, changed: set[str] | None = None) -> RequestOutput | None:
    """The output to hand out for `request` after a step, or None if nothing is due.

    `changed` holds the seq ids that got tokens or finished this step (None: all). best_of
    requests only report once finished: ranking needs the complete candidates.
    """
    params = request.sampling_params
    if params is None:  # a pooling request
        return make_pooling_output(request)
    finished = request.is_finished
    kind = params.output_kind
    best_of = params.num_candidates > params.n
    if (kind == RequestOutputKind.FINAL_ONLY or best_of) and not finished:
        return None
    now = time.time()
    metrics = request.metrics
    if finished and metrics.finished_time is None:
        metrics.finished_time = now
    delta = kind == RequestOutputKind.DELTA and not best_of
    if best_of:
        ranked = sorted(request.sequences, key=lambda s: s.cumulative_logprob, reverse=True)
        chosen = [(rank, seq) for rank, seq in enumerate(ranked[: params.n])]
    else:
        chosen = [
            (seq.index, seq)
            for seq in request.sequences
            if not delta or changed is None or seq.seq_id in changed
        ]
    outputs = [_completion(seq, index, request, delta) for index, seq in chosen]
    if delta and not outputs:
        return None
    prompt_logprobs = None
    if params.prompt_logprobs is not None:
        leader = request.sequences[0]
        if len(leader.prompt_logprobs) >= leader.num_prompt_tokens and (
            not delta or not request.sent_prompt_logprobs
        ):
            prompt_logprobs = list(leader.prompt_logprobs)
            request.sent_prompt_logprobs = True
    return RequestOutput(
        request_id=request.request_id,
        prompt=request.prompt,
        prompt_token_ids=request.prompt_token_ids,
        prompt_logprobs=prompt_logprobs,
        outputs=outputs,
        finished=finished,
        num_cached_tokens=max(request.sequences[0].num_cached_tokens, 0),
        metrics=metrics,
    )


def make_pooling_output(request: Request) -> PoolingRequestOutput | None:
    """The PoolingRequestOutput of a finished pooling request (None while it runs).

    An aborted request has no pooled data: its output carries `outputs.data = None`.
    """
    if not request.is_finished:
        return None
    metrics = request.metrics
    if metrics.finished_time is None:
        metrics.finished_time = time.time()
    seq = request.sequences[0]
    return PoolingRequestOutput(
        request_id=request.request_id,
        outputs=PoolingOutput(data=seq.pooled),
        prompt_token_ids=request.prompt_token_ids,
        finished=True,
        num_cached_tokens=0,
        metrics=metrics,
        prompt=request.prompt,
    )


def merge_delta_outputs(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """Fold the DELTA output `later` into `first` (same request, `first` older), in place.

    A consumer that fell behind then receives one output with all the new text and tokens
    instead of one per engine step: less work exactly when it is already slow.
    """
    by_index = {completion.index: completion for completion in first.outputs}
    for completion in later.outputs:
        earlier = by_index.get(completion.index)
        if earlier is None:
            by_index[completion.index] = completion
            first.outputs.append(completion)
            continue
        earlier.text += completion.text
        earlier.token_ids.extend(completion.token_ids)
        if completion.logprobs is not None:
            earlier.logprobs = (earlier.logprobs or []) + completion.logprobs
        earlier.cumulative_logprob = completion.cumulative_logprob
        earlier.finish_reason = completion.finish_reason
        earlier.stop_reason = completion.stop_reason
    first.outputs.sort(key=lambda completion: completion.index)
    if first.prompt_logprobs is None:
        first.prompt_logprobs = later.prompt_logprobs
    first.finished = later.finished
    first.metrics = later.metrics
    first.num_cached_tokens = later.num_cached_tokens
    return first
