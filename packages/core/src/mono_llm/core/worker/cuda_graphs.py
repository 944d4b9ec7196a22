"""CUDA graphs of the model for decode batches and small prefills, captured by one routine.

Decode-only steps replay a graph captured for the next larger batch size in 1, 2, 4, ...,
max_num_seqs: at small batch sizes a decode step is launch bound, and the graph replaces
hundreds of kernel launches by one. With `cuda_graph_max_prefill_tokens`, prefill and mixed
steps of few tokens replay graphs of the model body captured for 16, 32, 64, ... tokens (a
128-token prefill launches ~350 kernels from Python, ~19 ms of host time for ~6 ms of GPU
work on an H100); the lm_head then runs eagerly on the rows asked for only.

Every graph reads its input from one persistent `inputs_embeds` buffer, not from token ids:
before a replay the runner embeds the staged ids into it (`embed_input_ids`, one kernel
outside the graph) and writes any multimodal or other embedding overrides over their rows.
So text and embeddings steps replay the same graphs, and a step whose prompt mixes image
embeddings with text still runs graphed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mono_llm.core.models.interface import EngineModel
from mono_llm.core.worker.input_buffers import InputBuffers
from mono_llm.core.worker.step_inputs import StepInputs


def prefill_graph_sizes(limit: int, max_num_tokens: int, max_model_len: int) -> list[int]:
    """16, 32, 64, ... up to min(limit, max_num_tokens, max_model_len).

    Capped by max_model_len so that one sequence may hold every token of a size (the capture
    inputs, and the padding sequence of a replay), keeping block-table reads inside its row.
    """
    cap = min(limit, max_num_tokens, max_model_len)
    return [16 << i for i in range(32) if (16 << i) <= cap]


def decode_graph_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, ... up to max_num_seqs (included even when it is not a power of two)."""
    sizes = [1 << i for i in range(max_num_seqs.bit_length()) if (1 << i) <= max_num_seqs]
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


@dataclass(slots=True)
class GraphSet:
    """Graphs of one kind (decode or prefill), keyed by their token count."""

    decode: bool
    sizes: list[int]
    graphs: dict[int, torch.cuda.CUDAGraph] = field(default_factory=dict)


class CudaGraphs:
    """Captures and replays the runner's graphs; owns their output buffers.

    `logits` [max decode size, vocab] float32 holds a decode replay's logits (the lm_head is
    inside decode graphs); `hidden` [max prefill size, hidden] a prefill replay's hidden
    states (the lm_head runs eagerly after, on the rows asked for).
    """

    def __init__(
        self,
        model: EngineModel,
        buffers: InputBuffers,
        *,
        max_num_seqs: int,
        max_model_len: int,
        decode_sizes: list[int],
        prefill_sizes: list[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.buffers = buffers
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.device = device
        self.decode = GraphSet(True, decode_sizes)
        self.prefill = GraphSet(False, prefill_sizes)
        largest = max(decode_sizes + prefill_sizes)
        self.inputs_embeds = torch.zeros(
            (largest, model.hidden_size), dtype=dtype, device=device
        )  # [largest, hidden]: the graphs' input
        self.logits = torch.zeros(
            (max(decode_sizes, default=0), model.vocab_size), dtype=torch.float32, device=device
        )
        self.hidden = torch.zeros(
            (max(prefill_sizes, default=0), model.hidden_size), dtype=dtype, device=device
        )
        self.num_prefill_replays = 0  # for tests: prefill/mixed steps that replayed

    # ------------------------------------------------------------------ capture

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first: the smaller graphs reuse the largest's pool."""
        pool = torch.cuda.graph_pool_handle()
        for graph_set in (self.decode, self.prefill):
            for size in reversed(graph_set.sizes):
                graph_set.graphs[size] = self._capture_one(graph_set.decode, size, pool)
        torch.cuda.synchronize(self.device)

    def _capture_one(self, decode: bool, size: int, pool: object) -> torch.cuda.CUDAGraph:
        """The one capture routine. A decode graph has `size` one-token sequences; a prefill
        graph `size` tokens in min(size, max_num_seqs) sequence slots. Attention grids depend
        only on those two counts (the prefill kernel finds each program's sequence on the
        device), so one prefill graph serves any split of its tokens into sequences."""
        num_seqs = size if decode else min(size, self.max_num_seqs)
        self.buffers.fill_capture_inputs(size, num_seqs, decode)
        self._embed_staged(size, [])
        max_query_len = 1 if decode else size
        metadata = self.buffers.metadata(size, num_seqs, max_query_len, self.max_model_len, decode)
        with self.model.forward_context.use(metadata):
            self._body(decode, size)  # warm-up (Triton autotuning and compilation, allocator)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._body(decode, size)
        return graph

    def _body(self, decode: bool, size: int) -> None:
        hidden = self.model(
            None, self.buffers.positions[:size], inputs_embeds=self.inputs_embeds[:size]
        )
        if decode:
            self.logits[:size].copy_(self.model.compute_logits(hidden))
        else:
            self.hidden[:size].copy_(hidden)

    # ------------------------------------------------------------------ replay

    def decode_size(self, inputs: StepInputs) -> int | None:
        """Smallest decode graph that holds the step, if it is decode-only."""
        if not self.decode.graphs or not inputs.is_decode_only:
            return None
        return next((s for s in self.decode.sizes if s >= inputs.num_seqs), None)

    def prefill_size(self, inputs: StepInputs) -> int | None:
        """Smallest prefill graph that holds the step: its tokens, its sequences, and (when
        there are padding tokens) a free sequence slot for the padding sequence."""
        if not self.prefill.graphs or inputs.is_decode_only:
            return None
        num_tokens, num_seqs = inputs.num_tokens, inputs.num_seqs
        for size in self.prefill.sizes:
            slots = min(size, self.max_num_seqs)
            if size >= num_tokens and (size == num_tokens or num_seqs < slots):
                return size
        return None

    def replay_decode(self, size: int, overrides: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """Replay on the staged buffers; returns the logits of all `size` rows."""
        self._embed_staged(size, overrides)
        self.decode.graphs[size].replay()
        return self.logits[:size]

    def replay_prefill(self, size: int, overrides: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """Replay on the staged buffers; returns the hidden states of all `size` rows."""
        self._embed_staged(size, overrides)
        self.prefill.graphs[size].replay()
        self.num_prefill_replays += 1
        return self.hidden[:size]

    def _embed_staged(self, size: int, overrides: list[tuple[int, torch.Tensor]]) -> None:
        """Fill the graphs' input: the staged token ids embedded, then the overrides."""
        embeds = self.inputs_embeds
        embeds[:size].copy_(self.model.embed_input_ids(self.buffers.input_ids[:size]))
        for row, rows in overrides:
            embeds[row : row + rows.shape[0]].copy_(rows)
