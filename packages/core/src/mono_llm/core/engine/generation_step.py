"""The generation side of a step: logits in, tokens appended, stops checked.

`GenerationStep.run` executes the scheduled batch on the model runner, samples the rows of
slices that reached the end of their sequence, records prompt logprobs, and applies each
sampled token to its sequence (logprobs, grammar, detokenizer, stop conditions). It and
`PoolingEngine` are the engine's two `StepProcessor`s (engine/step.py): `EngineCore.step`
hands either the same scheduled batch and turns what changed into outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from mono_llm.core.engine.request import Request, Sequence, SequenceStatus
from mono_llm.core.engine.scheduler import Scheduler, SchedulerOutput
from mono_llm.core.engine.step_trace import StepPhases
from mono_llm.core.outputs import Logprob
from mono_llm.core.tokenizer import tokenizer_info
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch
from mono_llm.core.worker.sampler import Sampler, SamplerOutput, compute_logprobs, num_top_logprobs


class GenerationStep:
    """Runs generation steps for one engine (its runner, scheduler, sampler, requests)."""

    def __init__(
        self,
        model_runner: Any,
        scheduler: Scheduler,
        sampler: Sampler,
        requests: dict[str, Request],
        tokenizer: Any,
        *,
        vocab_size: int,
        decodable_vocab_size: int,
        eos_token_ids: set[int],
        on_failure: Callable[[str, Exception], None],
    ) -> None:
        self.model_runner = model_runner
        self.scheduler = scheduler
        self.sampler = sampler
        self.requests = requests  # the engine's live table (read-only here)
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        # Checkpoints pad the embedding past the tokenizer (Qwen2: 151936 rows, 151665
        # tokens); ids in the padding decode to nothing, so they are never sampled.
        self.decodable_vocab_size = decodable_vocab_size
        self.eos_token_ids = eos_token_ids
        # A request whose own processing raised (detokenizer, grammar): the engine drops it
        # and reports it; the rest of the batch goes on.
        self.on_failure = on_failure
        self.num_generation_tokens = 0
        # Set by the engine around a traced step (engine/step_trace.py); None otherwise.
        self.phases: StepPhases | None = None

    @torch.inference_mode()
    def run(self, sched: SchedulerOutput, batch: ModelBatch) -> dict[str, Sequence]:
        """Execute the batch and apply it; returns the sequences that changed, by seq id."""
        phases = self.phases
        logits = self.model_runner.execute(batch)  # [rows, vocab] float32
        if phases is not None:
            phases.mark("execute")
        self.scheduler.update(sched)
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        pooled_seqs: list[Sequence] = []
        prompt_rows: list[int] = []
        prompt_targets: list[int] = []
        prompt_owners: list[tuple[Sequence, int]] = []  # (seq, position of the target token)
        row = 0
        for item, count in zip(sched.scheduled, batch.logits_row_counts(), strict=True):
            seq = item.seq
            if item.logits == LogitsWanted.ALL:
                # Row j predicts token start+j+1; keep the prompt positions still missing
                # (a recomputation after preemption already has the earlier ones).
                first_missing = len(seq.prompt_logprobs)
                for offset in range(count):
                    target = item.start + offset + 1
                    if first_missing <= target < seq.num_prompt_tokens:
                        prompt_rows.append(row + offset)
                        prompt_targets.append(seq.token_ids[target])
                        prompt_owners.append((seq, target))
            if item.samples:
                if seq.is_pooling:
                    pooled_seqs.append(seq)
                elif count:
                    sample_rows.append(row + count - 1)
                    sample_seqs.append(seq)
            row += count
        if prompt_rows:
            self._record_prompt_logprobs(logits, prompt_rows, prompt_targets, prompt_owners)
        changed: dict[str, Sequence] = {}
        if sample_seqs:
            if len(sample_rows) == logits.shape[0]:  # every row samples (e.g. pure decode)
                sample_logits = logits
            else:
                rows = torch.tensor(sample_rows, device=logits.device)
                sample_logits = logits.index_select(0, rows)
            if self.decodable_vocab_size < sample_logits.shape[-1]:
                sample_logits[:, self.decodable_vocab_size :] = float("-inf")
            result = self.sampler(sample_logits, sample_seqs)
            read_tokens = None
            if len(sample_rows) == logits.shape[0] and result.sampled_logprob is None:
                # Async scheduling: the next decode step starts on the GPU from these tokens
                # while the host reads them and does the bookkeeping below.
                launch = getattr(self.model_runner, "launch_next_decode", None)
                read_tokens = launch(result.sampled) if launch is not None else None
            if phases is not None:
                phases.mark("sample")
                phases.launched_next = read_tokens is not None
            self._append_tokens(sample_seqs, result, changed, read_tokens)
        for seq in pooled_seqs:  # pooling requests finish after their prefill
            self.scheduler.finish([seq], SequenceStatus.FINISHED_STOPPED)
            changed[seq.seq_id] = seq
        if phases is not None:
            phases.mark("update")
        return changed

    def check_stop(self, seq: Sequence, token: int) -> SequenceStatus | None:
        """The finished status `token` gives `seq` (stop string, EOS, stop token, grammar
        end, length), or None while it goes on."""
        params = seq.sampling_params
        past_min = seq.num_output_tokens > params.min_tokens
        reached_min = seq.num_output_tokens >= params.min_tokens
        if seq.detokenizer is not None:
            stop_str = seq.detokenizer.update([token])
            if stop_str is not None and past_min:
                seq.stop_reason = stop_str
                return SequenceStatus.FINISHED_STOPPED
        if reached_min:
            if not params.ignore_eos and token in self.eos_token_ids:
                return SequenceStatus.FINISHED_STOPPED
            if token in (params.stop_token_ids or ()):
                seq.stop_reason = token
                return SequenceStatus.FINISHED_STOPPED
        if seq.grammar is not None and seq.grammar.is_terminated():
            return SequenceStatus.FINISHED_STOPPED
        if seq.num_output_tokens >= seq.max_tokens:
            return SequenceStatus.FINISHED_LENGTH
        return None

    # ------------------------------------------------------------------ internals

    def _record_prompt_logprobs(
        self,
        logits: torch.Tensor,
        rows: list[int],
        targets: list[int],
        owners: list[tuple[Sequence, int]],
    ) -> None:
        device = logits.device
        num_top = max(
            num_top_logprobs(seq.sampling_params.prompt_logprobs, self.vocab_size)
            for seq, _ in owners
        )
        chosen, ranks, top_ids, top_lps = compute_logprobs(
            logits.index_select(0, torch.tensor(rows, device=device)),
            torch.tensor(targets, device=device),
            num_top,
        )
        chosen_l, ranks_l = chosen.tolist(), ranks.tolist()
        top_ids_l, top_lps_l = top_ids.tolist(), top_lps.tolist()
        for i, (seq, _) in enumerate(owners):
            k = num_top_logprobs(seq.sampling_params.prompt_logprobs, self.vocab_size)
            seq.prompt_logprobs.append(
                self._logprob_dict(
                    targets[i], chosen_l[i], ranks_l[i], top_ids_l[i][:k], top_lps_l[i][:k]
                )
            )

    def _logprob_dict(
        self, token: int, logprob: float, rank: int, top_ids: list[int], top_lps: list[float]
    ) -> dict[int, Logprob]:
        info = tokenizer_info(self.tokenizer)
        entry = {token: Logprob(logprob, rank, info.decode_token(token))}
        for position, (tid, lp) in enumerate(zip(top_ids, top_lps, strict=True), start=1):
            if tid not in entry:
                entry[tid] = Logprob(lp, position, info.decode_token(tid))
        return entry

    def _append_tokens(
        self,
        seqs: list[Sequence],
        result: SamplerOutput,
        changed: dict[str, Sequence],
        read_tokens: Callable[[], list[int]] | None = None,
    ) -> None:
        # The step's one host sync (with async scheduling, overlapped by the next step).
        tokens = read_tokens() if read_tokens is not None else result.sampled.tolist()
        if self.phases is not None:
            self.phases.mark("wait")
        logprob_lists = None
        if result.sampled_logprob is not None:
            logprob_lists = (
                result.sampled_logprob.tolist(),
                result.sampled_rank.tolist(),
                result.top_ids.tolist(),
                result.top_logprobs.tolist(),
            )
        now = time.time()
        self.num_generation_tokens += len(tokens)
        failed: set[str] = set()
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if seq.request_id in failed:
                continue  # a sibling candidate's failure already dropped the request
            try:
                self._append_token(seq, token, i, logprob_lists, now, changed)
            except Exception as exc:  # this request's own failure; the batch goes on
                failed.add(seq.request_id)
                self.on_failure(seq.request_id, exc)

    def _append_token(
        self,
        seq: Sequence,
        token: int,
        i: int,
        logprob_lists: tuple[list[Any], ...] | None,
        now: float,
        changed: dict[str, Sequence],
    ) -> None:
        """One sampled token into its sequence: logprobs, grammar, detokenize, stop checks."""
        params = seq.sampling_params
        request = self.requests[seq.request_id]
        seq.append_token(token)
        changed[seq.seq_id] = seq
        if request.metrics.first_token_time is None:
            request.metrics.first_token_time = now
        request.metrics.last_token_time = now
        if logprob_lists is not None and params.needs_logprobs:
            logprob, rank, top_ids, top_lps = (lst[i] for lst in logprob_lists)
            seq.cumulative_logprob += logprob
            if params.logprobs is not None:
                k = num_top_logprobs(params.logprobs, self.vocab_size)
                seq.logprobs.append(
                    self._logprob_dict(token, logprob, rank, top_ids[:k], top_lps[:k])
                )
        if seq.grammar is not None:
            seq.grammar.accept_token(token)
        status = self.check_stop(seq, token)
        if status is not None:
            if seq.detokenizer is not None:
                seq.detokenizer.flush()
            self.scheduler.finish([seq], status)
