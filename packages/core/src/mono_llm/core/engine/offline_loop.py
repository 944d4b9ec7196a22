"""The offline `LLM`'s blocking loop, shared by generation and pooling: queue every request,
step the engine until all of them have finished, and return their outputs in submission order.

Both paths need the same guarantees: a request that fails inside the engine fails the whole
call (naming it) instead of being lost, and any error or interrupt aborts what is still queued,
so the engine is left with no stray requests or KV blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mono_llm.core.errors import EngineError
from mono_llm.core.outputs import RequestOutput

if TYPE_CHECKING:
    from mono_llm.core.engine.core import EngineCore

# Fewer prompts than this finish too fast for a progress bar to say anything.
PROGRESS_BAR_MIN_PROMPTS = 8


def run_until_finished(
    engine: EngineCore,
    count: int,
    submit: Callable[[int, str], None],
    next_request_id: Callable[[], str],
    use_tqdm: bool,
) -> list[Any]:
    """Call `submit(index, request_id)` for each of `count` requests, then step the engine
    until all finish; returns their final outputs in index order."""
    request_ids: list[str] = []
    try:
        for index in range(count):
            request_id = next_request_id()
            submit(index, request_id)
            request_ids.append(request_id)
    except BaseException:
        engine.abort_request(request_ids)
        raise
    finished: dict[str, Any] = {}
    bar = None
    if use_tqdm and count >= PROGRESS_BAR_MIN_PROMPTS:
        from tqdm.auto import tqdm

        bar = tqdm(total=count, desc="Processed prompts", dynamic_ncols=True)
    start = time.perf_counter()
    prompt_tokens = output_tokens = 0
    try:
        while len(finished) < len(request_ids):
            for out in engine.step():
                if not out.finished:
                    continue
                finished[out.request_id] = out
                if bar is not None:
                    prompt_tokens += len(out.prompt_token_ids)
                    if isinstance(out, RequestOutput):
                        output_tokens += sum(len(c.token_ids) for c in out.outputs)
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    rates = f"input {prompt_tokens / elapsed:.0f} tok/s"
                    if output_tokens:
                        rates += f", output {output_tokens / elapsed:.0f} tok/s"
                    bar.set_postfix_str(rates, refresh=False)
                    bar.update(1)
            for request_id, exc in engine.pop_failures().items():
                # A request whose own processing raised (e.g. its detokenizer): the call fails
                # with it rather than ending as "went idle" or losing it silently.
                raise EngineError(
                    f"Request {request_id} failed inside the engine: {exc!r}"
                ) from exc
            if not engine.has_unfinished_requests() and len(finished) < len(request_ids):
                raise EngineError("the engine went idle with requests unfinished")
    except BaseException:
        engine.abort_request([r for r in request_ids if r not in finished])
        raise
    finally:
        if bar is not None:
            bar.close()
    return [finished[request_id] for request_id in request_ids]
