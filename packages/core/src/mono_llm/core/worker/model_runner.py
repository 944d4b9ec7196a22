"""Runs one engine step: a `ModelBatch` of sequence slices in, float32 logits rows out.

The runner owns the model and the paged KV cache. Each step it flattens the slices into one
ragged batch (step_inputs.py), installs the step's `AttentionMetadata` in the model's
forward context, runs the model and projects only the rows the scheduler asked for onto the
vocabulary. The parts live beside it:

- `step_inputs`: the host-side flattening, shared by every runner;
- `input_buffers`: persistent pinned/device buffers on CUDA (one async copy per input);
- `cuda_graphs`: decode and small-prefill graphs, one capture routine for both;
- `kv_memory`: the KV cache tensor and how many blocks it gets (profiled on CUDA);
- `decode_speculation`: the next decode step's inputs, staged while the GPU runs this one.

Embedding overrides (multimodal items, anything not read from the token table) arrive on the
slices (`SequenceSlice.embeds_overrides`) and reach the model as `inputs_embeds`; steps
without them feed token ids on the eager path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator

import torch

from mono_llm.core.config import EngineConfig
from mono_llm.core.distributed.group import TensorParallelGroup
from mono_llm.core.layers.attention import AttentionMetadata
from mono_llm.core.layers.ops import HOST_SYNCING_REFERENCES, torch_ops_requested
from mono_llm.core.models.interface import (
    EngineModel,
    SupportsEncoderDecoder,
    SupportsMultiModal,
)
from mono_llm.core.models.loader import build_model
from mono_llm.core.multimodal.encoder_cache import EncoderCache
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.cuda_graphs import (
    CudaGraphs,
    decode_graph_sizes,
    prefill_graph_sizes,
)
from mono_llm.core.worker.decode_speculation import DecodeSpeculation
from mono_llm.core.worker.encoder_outputs import EncoderOutputs
from mono_llm.core.worker.input_buffers import InputBuffers
from mono_llm.core.worker.kv_memory import PagedKVCache, determine_num_blocks, profile_kv_budget
from mono_llm.core.worker.mm_embedder import MultiModalEmbedder
from mono_llm.core.worker.step_inputs import StepInputs, next_decode_inputs, prepare_step_inputs

logger = logging.getLogger(__name__)

__all__ = ["ModelRunner", "RunnerBase", "decode_graph_sizes", "prefill_graph_sizes"]


def runner_device(config: EngineConfig) -> torch.device:
    """The configured device, with the current CUDA index made explicit."""
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def embed_with_overrides(
    model: EngineModel, input_ids: torch.Tensor, overrides: list[tuple[int, torch.Tensor]]
) -> torch.Tensor:
    """inputs_embeds [num_tokens, hidden]: the ids embedded, override rows written over."""
    embeds = model.embed_input_ids(input_ids)
    for row, rows in overrides:
        embeds[row : row + rows.shape[0]] = rows
    return embeds


class RunnerBase:
    """What every runner (this one, the pooling encoder's) takes from the engine config the
    same way: device, dtype, the step's size limits, and the model built on the device."""

    def __init__(
        self, config: EngineConfig, tp: TensorParallelGroup | None = None, *, label: str
    ) -> None:
        """`label` names the model in the load-time log line of the subclass's module."""
        self.config = config
        sched = config.scheduler_config
        self.device = runner_device(config)
        self.dtype = config.model_config.dtype
        self.block_size = config.cache_config.block_size
        self.max_model_len = sched.max_model_len
        self.max_num_seqs = sched.max_num_seqs
        self.max_num_tokens = max(sched.max_num_batched_tokens, sched.max_num_seqs)
        self.max_blocks_per_seq = math.ceil(self.max_model_len / self.block_size)
        start = time.perf_counter()
        self.model: EngineModel = build_model(config.model_config, self.device, tp)
        self.vocab_size: int = self.model.vocab_size
        self.hidden_size: int = self.model.hidden_size
        logging.getLogger(type(self).__module__).info(
            "%s loaded in %.1f s", label, time.perf_counter() - start
        )


class ModelRunner(RunnerBase):
    """Owns the model and its KV cache; `execute(batch)` runs one step."""

    # Vision-language models: encoder outputs of media spans become slice overrides.
    mm_embedder: MultiModalEmbedder | None = None
    # M-RoPE models: steps that prefill a prompt with media run eagerly with 3-D positions.
    uses_mrope = False

    def __init__(self, config: EngineConfig, tp: TensorParallelGroup | None = None) -> None:
        """`tp`: this rank's tensor-parallel group when the model is split over devices."""
        self.tp = tp or TensorParallelGroup()
        super().__init__(config, self.tp, label="model")
        sched = config.scheduler_config
        if isinstance(self.model, SupportsMultiModal):
            self.mm_embedder = MultiModalEmbedder(
                self.model, EncoderCache(max_tokens=self.max_num_tokens)
            )
        self.uses_mrope = bool(getattr(self.model, "uses_mrope", False))
        # Encoder–decoder models (Whisper): encoder outputs live per sequence beside the KV
        # cache; their steps read them by sequence, which a captured graph cannot.
        self.encoder_outputs: EncoderOutputs | None = None
        if isinstance(self.model, SupportsEncoderDecoder):
            self.encoder_outputs = EncoderOutputs(self.model, config, self.device, self.dtype)
            self.max_num_seqs = sched.max_num_seqs  # lowered when few pool slots fit

        self._use_cuda = self.device.type == "cuda"
        self.buffers: InputBuffers | None = None
        if self._use_cuda:
            self.buffers = InputBuffers(
                self.device, self.max_num_tokens, self.max_num_seqs, self.max_blocks_per_seq
            )
        self.paged_cache = PagedKVCache(
            self.model.attention_layers(), self.block_size, self.dtype, self.device
        )
        num_blocks = determine_num_blocks(
            config.cache_config,
            self.paged_cache.bytes_per_block,
            max_num_seqs=self.max_num_seqs,
            max_blocks_per_seq=self.max_blocks_per_seq,
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            profile=self._profile_kv_budget if self._use_cuda else None,
        )
        # Every rank holds the same blocks: the scheduler (rank 0) allocates for all of them.
        self.num_blocks = self.tp.min_int(num_blocks, self.device)
        config.cache_config.num_blocks = self.num_blocks
        self.paged_cache.allocate(self.num_blocks)
        self.graphs: CudaGraphs | None = None
        # Speculated decode inputs carry unshifted positions: not for M-RoPE models.
        self._overlap_decode = config.overlap_decode_prepare and not self.uses_mrope
        self._speculation: DecodeSpeculation | None = None
        self.num_speculated_decode_steps = 0  # for tests: decode steps that used it
        # Async scheduling (CUDA): the next decode step starts from the sampled tokens on the
        # device before the host reads them (launch_next_decode).
        self._async_next = self._use_cuda and config.async_scheduling
        self.num_launched_decode_steps = 0  # for tests: steps that used a launched step
        # What the last step ran (the step trace reads these; plain stores, always kept):
        # "decode_graph", "prefill_graph", "eager", "speculated" or "launched", and the graph
        # size; steps launched ahead whose results were dropped (cumulative).
        self.last_step_path = "eager"
        self.last_graph_size: int | None = None
        self.num_dropped_launches = 0
        if self._use_cuda:
            self._host_sampled = torch.zeros(self.max_num_seqs, dtype=torch.int64, pin_memory=True)
            self._sampled_ready = torch.cuda.Event()
        redirected = torch_ops_requested() & HOST_SYNCING_REFERENCES
        if self._use_cuda and redirected and not config.enforce_eager:
            logger.warning(
                "CUDA graphs disabled: %s run through host-syncing references", redirected
            )
        elif self._use_cuda and not config.enforce_eager and self.encoder_outputs is None:
            self._capture_graphs(config.cuda_graph_max_prefill_tokens)

    # ------------------------------------------------------------------ public API

    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder_outputs is not None

    @property
    def encoder_input_shape(self) -> tuple[int, ...] | None:
        """Shape of one request's encoder input (Whisper: (n_mels, 3000)); None without one."""
        return self.encoder_outputs.input_shape if self.encoder_outputs is not None else None

    @property
    def num_encoder_positions(self) -> int:
        """Encoder positions of one request (its encoder's cost in a step's budget)."""
        return self.encoder_outputs.num_positions if self.encoder_outputs is not None else 0

    def free_encoder_output(self, key: str) -> None:
        """Drop a sequence's encoder output (finished, aborted or preempted)."""
        if self.encoder_outputs is not None:
            self.encoder_outputs.free(key)

    @contextlib.contextmanager
    def _encoder_step(self, batch: ModelBatch) -> Iterator[None]:
        """Around a step of an encoder–decoder model: encode new sequences, install the
        step's cross-attention inputs."""
        if self.encoder_outputs is None:
            yield
            return
        metadata = self.encoder_outputs.step_metadata(batch.slices)
        with self.model.cross_context.use(metadata):  # type: ignore[attr-defined]
            yield

    @torch.inference_mode()
    def execute(self, batch: ModelBatch) -> torch.Tensor:
        """Float32 logits [sum(batch.logits_row_counts()), vocab] on `self.device`."""
        with self._encoder_step(batch):
            return self._execute(batch)

    def _execute(self, batch: ModelBatch) -> torch.Tensor:
        speculation, self._speculation = self._speculation, None
        if self.mm_embedder is not None:
            self.mm_embedder.fill_overrides(batch.slices)
        if speculation is not None and speculation.launched:
            rows = speculation.launched_rows(batch.slices)
            if rows is not None:
                self._ran("launched", speculation.graph_size)
                return self._take_launched(speculation, batch, rows)
            self.num_dropped_launches += 1
            # Not this batch (a request arrived, one was preempted): the launched step's
            # logits are dropped. Its KV writes were the right values for its sequences' next
            # positions, rewritten alike below, or past the end of a finished sequence.
        elif speculation is not None and speculation.holds(batch.slices):
            # Only the token ids are new: the step's host preparation already ran while the
            # GPU executed the previous step.
            assert self.buffers is not None and self.graphs is not None
            self._ran("speculated", speculation.graph_size)
            self.buffers.stage_token_ids([s.token_ids[0] for s in batch.slices])
            logits = self.graphs.replay_decode(speculation.graph_size, [])
            self.num_speculated_decode_steps += 1
            self._speculate_decode(speculation.inputs, batch.slices, speculation.graph_size)
            return logits[: len(batch.slices)]
        inputs = self.prepare(batch)
        num_seqs, rows = inputs.num_seqs, len(inputs.logits_indices)
        # Graphs take 1-D positions: a step with 3-D (M-RoPE) positions runs eagerly.
        graphs = self.graphs if inputs.mrope_positions is None else None
        graph_size = graphs.decode_size(inputs) if graphs is not None else None
        if graph_size is not None:
            assert self.buffers is not None and graphs is not None
            self._ran("decode_graph", graph_size)
            self.buffers.stage(inputs, pad_to=graph_size)
            logits = graphs.replay_decode(graph_size, inputs.embeds_overrides)
            if rows == num_seqs:  # one row per sequence, in order: the graph's own rows
                if self._overlap_decode and not inputs.embeds_overrides:
                    self._speculate_decode(inputs, batch.slices, graph_size)
                return logits[:rows]
            return logits.index_select(0, self.buffers.logits_indices[:rows])
        prefill_size = graphs.prefill_size(inputs) if graphs is not None else None
        if prefill_size is not None:
            assert self.buffers is not None and graphs is not None
            self._ran("prefill_graph", prefill_size)
            self.buffers.stage(inputs, prefill_to=prefill_size)
            hidden = graphs.replay_prefill(prefill_size, inputs.embeds_overrides)
            logits_indices = self.buffers.logits_indices[:rows]
        else:
            self._ran("eager", None)
            hidden, logits_indices = self.forward(inputs)
        if rows == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32, device=self.device)
        return self.model.compute_logits(hidden.index_select(0, logits_indices))

    def _ran(self, path: str, graph_size: int | None) -> None:
        self.last_step_path = path
        self.last_graph_size = graph_size

    @torch.inference_mode()
    def launch_next_decode(self, sampled: torch.Tensor) -> Callable[[], list[int]] | None:
        """Async scheduling: start the staged next decode step now, its token ids taken from
        `sampled` (this step's tokens, one per sequence in batch order) on the device, so the
        GPU runs it while the host reads `sampled` and does the step's bookkeeping. Returns
        the function that reads `sampled` on the host (waiting for it, not for the step just
        launched); None when no next step is staged, which leaves the ordinary path."""
        speculation = self._speculation
        num = int(sampled.shape[0])
        if not self._async_next or speculation is None or speculation.launched:
            return None
        if num != len(speculation.tables):
            return None
        assert self.buffers is not None and self.graphs is not None
        host = self._host_sampled[:num]
        host.copy_(sampled, non_blocking=True)
        ready = self._sampled_ready
        ready.record()
        self.buffers.input_ids[:num].copy_(sampled)  # device to device, behind the staging
        self.graphs.replay_decode(speculation.graph_size, [])
        speculation.launched = True

        def read() -> list[int]:
            ready.synchronize()
            return host.tolist()

        return read

    def _take_launched(
        self, speculation: DecodeSpeculation, batch: ModelBatch, rows: list[int]
    ) -> torch.Tensor:
        """The logits of a batch whose step was launched ahead; stage the one after it."""
        assert self.graphs is not None
        self.num_speculated_decode_steps += 1
        self.num_launched_decode_steps += 1
        logits = self.graphs.logits
        if len(rows) == len(speculation.tables):
            if self._overlap_decode:
                self._speculate_decode(speculation.inputs, batch.slices, speculation.graph_size)
            return logits[: len(rows)]
        # Some sequences finished meanwhile: their rows (one step past their end) are dropped.
        picked = logits.index_select(0, torch.tensor(rows, device=self.device))
        inputs = self.prepare(batch)
        graph_size = self.graphs.decode_size(inputs) if inputs.mrope_positions is None else None
        if graph_size is not None and self._overlap_decode:
            self._speculate_decode(inputs, batch.slices, graph_size)
        return picked

    @torch.inference_mode()
    def execute_hidden(self, batch: ModelBatch) -> torch.Tensor:
        """Final hidden states [batch.num_tokens, hidden] of every token (for pooling)."""
        self._speculation = None  # its staged buffers are overwritten below
        self._ran("eager", None)
        with self._encoder_step(batch):
            hidden, _ = self.forward(self.prepare(batch))
        return hidden

    def prepare(self, batch: ModelBatch) -> StepInputs:
        """The step's flattened host inputs (checked against this runner's limits)."""
        return prepare_step_inputs(batch, self.block_size, self.max_num_tokens, self.max_num_seqs)

    def forward(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager forward; returns (hidden [num_tokens, hidden], logits_indices on device)."""
        num_tokens, num_seqs = inputs.num_tokens, inputs.num_seqs
        decode_only = inputs.is_decode_only
        if self.buffers is not None:
            self.buffers.stage(inputs)
            metadata = self.buffers.metadata(
                num_tokens, num_seqs, inputs.max_query_len, inputs.max_seq_len, decode_only
            )
            input_ids = self.buffers.input_ids[:num_tokens]
            positions = self.buffers.positions[:num_tokens]
            logits_indices = self.buffers.logits_indices[: len(inputs.logits_indices)]
        else:
            metadata = AttentionMetadata(
                slot_mapping=torch.from_numpy(inputs.slot_mapping),
                block_tables=torch.from_numpy(inputs.block_tables),
                query_start_loc=torch.from_numpy(inputs.query_start_loc),
                seq_lens=torch.from_numpy(inputs.seq_lens),
                max_query_len=inputs.max_query_len,
                max_seq_len=inputs.max_seq_len,
                decode_only=decode_only,
            )
            input_ids = torch.from_numpy(inputs.input_ids)
            positions = torch.from_numpy(inputs.positions)
            logits_indices = torch.from_numpy(inputs.logits_indices)
        if inputs.mrope_positions is not None:
            positions = torch.from_numpy(inputs.mrope_positions).to(self.device)
        with self.model.forward_context.use(metadata):
            if inputs.embeds_overrides:
                embeds = embed_with_overrides(self.model, input_ids, inputs.embeds_overrides)
                hidden = self.model(None, positions, inputs_embeds=embeds)
            else:
                hidden = self.model(input_ids, positions)
        return hidden, logits_indices

    def release_request(self, request_id: str) -> None:
        """Free what the runner keeps for a request that left the engine (encoder outputs)."""
        if self.mm_embedder is not None:
            self.mm_embedder.release(request_id)

    @property
    def kv_cache_bytes_per_block(self) -> int:
        return self.paged_cache.bytes_per_block

    @property
    def kv_cache(self) -> torch.Tensor:
        """[layers, 2, num_blocks, block_size, kv_heads, head_dim]."""
        assert self.paged_cache.tensor is not None
        return self.paged_cache.tensor

    # ------------------------------------------------------------------ CUDA graphs

    def _capture_graphs(self, max_prefill_tokens: int) -> None:
        assert self.buffers is not None
        start = time.perf_counter()
        self.graphs = CudaGraphs(
            self.model,
            self.buffers,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            decode_sizes=decode_graph_sizes(self.max_num_seqs),
            prefill_sizes=prefill_graph_sizes(
                max_prefill_tokens, self.max_num_tokens, self.max_model_len
            ),
            dtype=self.dtype,
            device=self.device,
        )
        self.graphs.capture()
        logger.info(
            "captured %d decode and %d prefill CUDA graphs in %.1f s",
            len(self.graphs.decode.graphs),
            len(self.graphs.prefill.graphs),
            time.perf_counter() - start,
        )

    @property
    def decode_graphs(self) -> dict[int, torch.cuda.CUDAGraph]:
        """Captured decode graphs by batch size (empty when eager)."""
        return self.graphs.decode.graphs if self.graphs is not None else {}

    @property
    def prefill_graphs(self) -> dict[int, torch.cuda.CUDAGraph]:
        """Captured prefill graphs by token count (empty when eager or not configured)."""
        return self.graphs.prefill.graphs if self.graphs is not None else {}

    @property
    def num_prefill_graph_replays(self) -> int:
        """Prefill/mixed steps that replayed a graph (for tests)."""
        return self.graphs.num_prefill_replays if self.graphs is not None else 0

    def _speculate_decode(
        self, inputs: StepInputs, slices: list[SequenceSlice], graph_size: int
    ) -> None:
        """Stage the next decode step of the same sequences, assuming each advances by one
        token, while the GPU runs this step. Its copies are queued behind this step's graph,
        which has read the buffers by then. Skipped when some sequence's next token needs a
        block it does not have yet (the scheduler allocates it at the next step)."""
        assert self.buffers is not None
        tables = [s.block_table for s in slices]
        table_lens = [len(t) for t in tables]
        upcoming = next_decode_inputs(inputs, self.block_size, table_lens)
        if upcoming is None:
            return
        self.buffers.stage(upcoming, pad_to=graph_size)
        self._speculation = DecodeSpeculation(
            upcoming, graph_size, tables, table_lens, upcoming.positions.tolist()
        )

    # ------------------------------------------------------------------ KV memory profile

    def _profile_kv_budget(self) -> int:
        """Bytes left for the KV cache after a forward of the largest step the scheduler makes:
        max_num_batched_tokens tokens with a temporary cache just big enough for them, then
        the lm_head and a softmax over max_num_seqs rows (the sampler's share)."""
        tokens = self.max_num_tokens
        seq_len = min(tokens, self.max_model_len)
        num_seqs = min(math.ceil(tokens / seq_len), self.max_num_seqs)
        blocks_per_seq = math.ceil(seq_len / self.block_size)
        temp_blocks = num_seqs * blocks_per_seq

        def run_largest_step() -> None:
            self.paged_cache.allocate(temp_blocks)
            slices, remaining = [], tokens
            for i in range(num_seqs):
                n = min(seq_len, remaining)
                remaining -= n
                table = list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))
                slices.append(SequenceSlice([0] * n, 0, table, LogitsWanted.NONE))
            with torch.inference_mode(), contextlib.ExitStack() as stack:
                if self.encoder_outputs is not None:
                    # The encoder's peak: a budget's worth of requests encoded at once.
                    metadata = self.encoder_outputs.profile_metadata(slices, tokens)
                    cross = self.model.cross_context  # type: ignore[attr-defined]
                    stack.enter_context(cross.use(metadata))
                encoded = None
                profile_items = getattr(self.model, "profile_items", None)
                if self.mm_embedder is not None and profile_items is not None:
                    # The vision tower's peak for a step whose every token is an image token
                    # (its outputs are held while the decoder runs).
                    encoded = self.model.embed_multimodal(profile_items(tokens))
                hidden, _ = self.forward(self.prepare(ModelBatch(slices)))
                logits = self.model.compute_logits(hidden[: min(self.max_num_seqs, tokens)])
                torch.log_softmax(logits, dim=-1)
                torch.softmax(logits, dim=-1)
            del hidden, logits, encoded
            torch.cuda.synchronize(self.device)
            self.paged_cache.free()

        return profile_kv_budget(
            self.device,
            self.config.cache_config.gpu_memory_utilization,
            temp_blocks * self.paged_cache.bytes_per_block,
            run_largest_step,
        )
