"""The interface both kinds of engine step share.

A step is scheduled the same way for every model (the scheduler's `SchedulerOutput`, flattened
into one `ModelBatch`); what runs it differs: `GenerationStep` samples tokens, `PoolingEngine`
pools hidden states. Either returns the sequences that changed, and `EngineCore` turns those
into outputs, so the engine loop never asks which kind of model it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mono_llm.core.engine.request import Sequence
    from mono_llm.core.engine.scheduler import SchedulerOutput
    from mono_llm.core.worker.batch import ModelBatch


class StepProcessor(Protocol):
    def run(self, sched: SchedulerOutput, batch: ModelBatch) -> dict[str, Sequence]:
        """Execute `batch` on the model, update the scheduler with `sched`, apply the results
        to the sequences (tokens appended, pooled vectors set, finished ones finished) and
        return those that changed, by seq id."""
        ...
