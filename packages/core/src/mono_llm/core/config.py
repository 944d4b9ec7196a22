"""Engine configuration: `EngineArgs` (what a user sets) and the configs derived from it.

Each `EngineArgs` field carries a docstring (the string literal right after it); the CLI
turns these into `--help` text, so flags, defaults and documentation cannot drift apart.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import logging
import os
import textwrap
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import torch

from mono_llm.core.distributed.checks import check_parallel_config
from mono_llm.core.errors import InvalidRequestError, ParallelConfigError, UnsupportedModelError
from mono_llm.core.hub import resolve_model_dir
from mono_llm.core.models.registry import find_spec, resolve_model_class

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Keys under which HF configs state the trained context length, most specific first.
_CONTEXT_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "max_target_positions",
)


@dataclass(slots=True)
class EngineArgs:
    """Everything that configures one engine (one served model)."""

    model: str | None = None
    """A local HF-format model folder (config.json, *.safetensors, tokenizer files), or a hub id
    (org/name) resolved through the Hugging Face cache, downloaded when the hub is reachable."""
    served_model_name: str | None = None
    """Name clients use in the `model` field; defaults to the `model` argument."""
    tokenizer: str | None = None
    """Folder or hub id of the tokenizer, if not the model's."""
    revision: str | None = None
    """Branch, tag or commit of a hub id (ignored for local folders)."""
    download_dir: str | None = None
    """Cache folder for hub downloads; default: the Hugging Face cache (HF_HUB_CACHE)."""
    trust_remote_code: bool = False
    """Never executes code from the model folder; accepted for vLLM compatibility only."""
    dtype: str = "auto"
    """Weight and activation dtype: auto (the checkpoint's torch_dtype), bfloat16, float16, float32."""
    max_model_len: int | None = None
    """Context window (prompt + output tokens); defaults to the model's trained length."""
    max_num_batched_tokens: int | None = None
    """Token budget of one engine step (prefill chunks + decodes). Default, as vLLM's: on a GPU
    of 70 GiB or more 16384 offline and 8192 in the server; 8192 on smaller GPUs; 2048 on CPU."""
    max_num_seqs: int | None = None
    """Most sequences running at once. Default, as vLLM's: 1024 on a GPU of 70 GiB or more,
    256 elsewhere."""
    max_waiting_requests: int | None = None
    """Bound of the waiting queue; past it new requests are refused (HTTP 503). None: unbounded."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory the engine may use (weights, activations and KV cache)."""
    kv_cache_memory_gib: float | None = None
    """KV cache size in GiB; overrides gpu_memory_utilization. Default on CPU: 1 GiB."""
    num_gpu_blocks_override: int | None = None
    """Use exactly this many KV cache blocks (for testing preemption)."""
    block_size: int = 16
    """Tokens per KV cache block."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of identical prompt prefixes across requests."""
    enable_chunked_prefill: bool = True
    """Split long prompts across steps so decodes are never starved."""
    seed: int = 0
    """Seed for weights with load_format=dummy and for requests without a seed."""
    load_format: str = "auto"
    """auto (safetensors, else PyTorch .bin), safetensors, pt (.bin only), dummy (random weights)."""
    generation_config: str = "auto"
    """auto: default sampling from the model's generation_config.json; vllm: ignore it; or a folder."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cuda, cpu."""
    enforce_eager: bool = False
    """Disable CUDA graphs."""
    cuda_graph_max_prefill_tokens: int = 512
    """Prefill/mixed steps of up to this many tokens replay CUDA graphs (0: they run eagerly)."""
    overlap_decode_prepare: bool = True
    """Prepare the next decode step's inputs while the GPU runs this one (checked before use)."""
    async_scheduling: bool = True
    """CUDA: launch the next decode step from this step's sampled tokens on the GPU before the
    host reads them, so the host's bookkeeping overlaps the GPU (outputs are unchanged)."""
    max_logprobs: int = 20
    """Largest logprobs / prompt_logprobs a request may ask for (-1: no limit)."""
    task: str = "auto"
    """auto, generate, embed, classify, score: what the model is served for."""
    runner: str = "auto"
    """auto, generate, pooling: generate text, or pool hidden states (embeddings, classes,
    scores); with pooling, a causal LM serves embeddings unless --convert says otherwise."""
    convert: str = "auto"
    """auto, none, embed, classify: serve the model as this pooling task (implies --runner
    pooling)."""
    hf_overrides: dict[str, Any] | None = None
    """JSON merged over the model's config.json (nested objects merge key by key), e.g.
    '{"architectures": ["Qwen3ForSequenceClassification"]}' or a longer max_position_embeddings."""
    quantization: str | None = None
    """Only unquantized weights are served; any method named here is refused at start-up."""
    kv_cache_dtype: str = "auto"
    """auto: the KV cache is kept in the model's dtype (fp8 caches are not implemented)."""
    pipeline_parallel_size: int = 1
    """Only 1: mono-llm splits a model over GPUs with tensor parallelism."""
    limit_mm_per_prompt: dict[str, int] | None = None
    """Most media items of each modality in one prompt, as JSON: '{"image": 2}'. Default for vision-language models: 8 images; text-only models accept none."""
    disable_log_stats: bool = False
    """Do not log throughput statistics periodically."""
    tensor_parallel_size: int = 1
    """Split the model over this many devices (one worker process each; NCCL between GPUs,
    gloo between CPU processes). Attention heads, the MLP and the vocabulary must divide by it."""
    data_parallel_size: int = 1
    """Engine replicas behind one server (each with tensor_parallel_size devices); requests go
    to the least loaded replica."""
    distributed_executor_backend: str = "mp"
    """How tensor-parallel workers start: mp (local processes) or ray (Ray actors placed by a
    placement group, one bundle per worker; needs `pip install ray`)."""
    engine_process: bool = False
    """AsyncLLM only: run the engine's step loop in its own process (the server's default), so
    HTTP, tokenization and output handling never hold the interpreter a model step needs.
    Pooling and vision-language models, and the offline LLM, always run in-process."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", *_DTYPES):
            raise InvalidRequestError(
                f"dtype must be one of auto, {', '.join(_DTYPES)}; got {self.dtype!r}.",
                param="dtype",
            )
        if self.load_format not in ("auto", "safetensors", "pt", "dummy"):
            raise InvalidRequestError(
                f"load_format must be auto, safetensors, pt or dummy; got {self.load_format!r}.",
                param="load_format",
            )
        if self.trust_remote_code:
            raise InvalidRequestError(
                "trust_remote_code is not supported: mono-llm never runs code from a model "
                "folder; use an architecture it implements.",
                param="trust_remote_code",
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidRequestError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}.",
                param="gpu_memory_utilization",
            )
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise InvalidRequestError(
                f"block_size must be a power of two, got {self.block_size}.", param="block_size"
            )
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise InvalidRequestError("max_num_seqs must be at least 1.", param="max_num_seqs")
        if self.cuda_graph_max_prefill_tokens < 0:
            raise InvalidRequestError(
                "cuda_graph_max_prefill_tokens must be 0 or more.",
                param="cuda_graph_max_prefill_tokens",
            )
        self.task = _task_of_runner(self.task, self.runner, self.convert)
        if self.quantization not in (None, "", "none"):
            raise InvalidRequestError(
                f"quantization={self.quantization!r} is not supported: mono-llm serves "
                "unquantized float32/float16/bfloat16 weights only.",
                param="quantization",
            )
        if self.kv_cache_dtype != "auto":
            raise InvalidRequestError(
                f"kv_cache_dtype={self.kv_cache_dtype!r} is not supported: the KV cache is kept "
                "in the model's dtype (auto).",
                param="kv_cache_dtype",
            )
        if self.pipeline_parallel_size != 1:
            raise ParallelConfigError(
                "pipeline parallelism is not implemented; split the model with "
                "--tensor-parallel-size instead.",
                param="pipeline_parallel_size",
            )
        if isinstance(self.hf_overrides, str):
            self.hf_overrides = _json_object(self.hf_overrides, "hf_overrides")
        if isinstance(self.limit_mm_per_prompt, str):
            self.limit_mm_per_prompt = parse_mm_limits(self.limit_mm_per_prompt)
        if self.limit_mm_per_prompt is not None:
            check_mm_limits(self.limit_mm_per_prompt)
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ParallelConfigError(f"{name} must be at least 1.", param=name)
        if self.distributed_executor_backend not in ("mp", "ray"):
            raise ParallelConfigError(
                "distributed_executor_backend must be mp or ray; got "
                f"{self.distributed_executor_backend!r}.",
                param="distributed_executor_backend",
            )
        if self.device not in ("auto", "cuda", "cpu"):
            raise InvalidRequestError(
                f"device must be auto, cuda or cpu; got {self.device!r}.", param="device"
            )

    # Step token budget on a large GPU: an offline batch favours throughput (vLLM's LLM-class
    # default); the server (AsyncEngineArgs) keeps steps short for its streams' latency.
    _large_gpu_token_budget: ClassVar[int] = 16384

    def _batch_defaults(self, device: str) -> tuple[int, int]:
        """(max_num_seqs, max_num_batched_tokens) when not given, vLLM's defaults: a GPU of
        70 GiB or more (H100, H200) runs up to 1024 sequences, enough for a thousand-request
        offline batch to decode at once, where 256 left three quarters of it queued."""
        if device != "cuda":
            return 256, 2048
        if not torch.cuda.is_available():  # refused later, with the parallel-config checks
            return 256, 8192
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if total >= 70 * 1024**3:
            return 1024, self._large_gpu_token_budget
        return 256, 8192

    def create_engine_config(self) -> EngineConfig:
        """Read the model folder and resolve every 'auto' into a concrete value."""
        if not self.model:
            raise InvalidRequestError("A model folder is required.", param="model")
        model_dir = resolve_model_dir(
            self.model, revision=self.revision, download_dir=self.download_dir
        )
        if not (model_dir / "config.json").is_file():
            raise UnsupportedModelError(
                f"{self.model!r} is not an HF-format model folder (no config.json in {model_dir})."
            )
        hf_config = _read_hf_config(model_dir)
        if self.hf_overrides:
            hf_config = _merged(hf_config, self.hf_overrides)
        # Fail here, at start-up, for a model we cannot run (not later inside a server's
        # lifespan): the error names every supported architecture.
        resolve_model_class(list(hf_config.get("architectures") or []))
        _check_not_quantized(hf_config, model_dir)
        _check_rope_scaling(hf_config)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = _resolve_dtype(self.dtype, hf_config, device)
        trained_len = _trained_context_length(hf_config)
        max_model_len = self.max_model_len or trained_len
        if trained_len is not None and max_model_len > trained_len:
            raise InvalidRequestError(
                f"max_model_len={max_model_len} is larger than the model's trained context "
                f"length {trained_len}.",
                param="max_model_len",
            )
        if max_model_len is None:
            max_model_len = 2048
        max_model_len = _cap_to_sliding_window(hf_config, max_model_len, self.max_model_len)
        tokenizer_dir = model_dir
        if self.tokenizer:
            tokenizer_dir = resolve_model_dir(
                self.tokenizer, download_dir=self.download_dir, what="tokenizer"
            )
        model_config = ModelConfig(
            model=str(model_dir),
            served_model_name=self.served_model_name or self.model,
            tokenizer=str(tokenizer_dir),
            hf_config=hf_config,
            dtype=dtype,
            max_model_len=max_model_len,
            load_format=self.load_format,
            generation_config=self.generation_config,
            seed=self.seed,
            max_logprobs=self.max_logprobs,
            task=self.task,
            limit_mm_per_prompt=resolve_mm_limits(hf_config, self.limit_mm_per_prompt),
        )
        default_seqs, default_budget = self._batch_defaults(device)
        max_num_seqs = self.max_num_seqs or default_seqs
        budget = self.max_num_batched_tokens
        if budget is None:
            budget = default_budget
            if not self.enable_chunked_prefill:
                budget = max(budget, max_model_len)
        if not self.enable_chunked_prefill and budget < max_model_len:
            raise InvalidRequestError(
                f"max_num_batched_tokens ({budget}) is smaller than max_model_len "
                f"({max_model_len}) and chunked prefill is disabled: long prompts could never run.",
                param="max_num_batched_tokens",
            )
        scheduler_config = SchedulerConfig(
            max_num_batched_tokens=budget,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
            max_waiting_requests=self.max_waiting_requests,
        )
        cache_config = CacheConfig(
            block_size=self.block_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            kv_cache_memory_gib=self.kv_cache_memory_gib,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            enable_prefix_caching=self.enable_prefix_caching,
        )
        parallel_config = ParallelConfig(
            tensor_parallel_size=self.tensor_parallel_size,
            data_parallel_size=self.data_parallel_size,
            distributed_executor_backend=self.distributed_executor_backend,
        )
        check_parallel_config(
            parallel_config.tensor_parallel_size,
            parallel_config.data_parallel_size,
            model_config.architectures,
            model_config.task,
            model_config.text_config,
            device,
        )
        return EngineConfig(
            model_config=model_config,
            cache_config=cache_config,
            scheduler_config=scheduler_config,
            parallel_config=parallel_config,
            device=device,
            enforce_eager=self.enforce_eager,
            cuda_graph_max_prefill_tokens=self.cuda_graph_max_prefill_tokens,
            overlap_decode_prepare=self.overlap_decode_prepare,
            async_scheduling=self.async_scheduling,
            disable_log_stats=self.disable_log_stats,
            engine_process=self.engine_process,
        )


@dataclass(slots=True)
class AsyncEngineArgs(EngineArgs):
    """EngineArgs for `AsyncLLM` (the server's engine)."""

    _large_gpu_token_budget: ClassVar[int] = 8192

    disable_log_requests: bool = True
    """Do not log each request's arrival and parameters."""
    engine_process: bool = True
    """Run the engine's step loop in its own process (ZeroMQ between it and the API process);
    --no-engine-process keeps it in a thread of the server process."""


@dataclass(slots=True)
class ModelConfig:
    model: str
    served_model_name: str
    tokenizer: str
    hf_config: dict[str, Any]  # config.json as read
    dtype: torch.dtype
    max_model_len: int
    load_format: str = "auto"
    generation_config: str = "auto"
    seed: int = 0
    max_logprobs: int = 20
    task: str = "auto"
    # modality -> most items per prompt; empty for a text-only model
    limit_mm_per_prompt: dict[str, int] = field(default_factory=dict)

    @property
    def architectures(self) -> list[str]:
        return list(self.hf_config.get("architectures") or [])

    @property
    def text_config(self) -> dict[str, Any]:
        """The language model's part of the config (nested for multimodal models)."""
        return self.hf_config.get("text_config") or self.hf_config


@dataclass(slots=True)
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_gib: float | None = None
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    num_blocks: int | None = None  # set by the model runner once memory is known


@dataclass(slots=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    max_waiting_requests: int | None = None


@dataclass(slots=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str = "mp"
    # The first device of this engine's ranks (rank r runs on cuda:first_device + r): data-
    # parallel replicas each take the next tensor_parallel_size devices.
    first_device: int = 0


@dataclass(slots=True)
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    device: str = "cpu"
    enforce_eager: bool = False
    cuda_graph_max_prefill_tokens: int = 512
    overlap_decode_prepare: bool = True
    async_scheduling: bool = True
    disable_log_stats: bool = False
    engine_process: bool = False  # AsyncLLM: the step loop in a child process


# Media items a prompt may carry unless --limit-mm-per-prompt says (vision models: 8 images).
DEFAULT_ITEMS_PER_PROMPT = {"image": 8}


def parse_mm_limits(text: str) -> dict[str, int]:
    """'{"image": 2}' (vLLM's JSON form) or 'image=2,video=0' -> {"image": 2, ...}."""
    text = text.strip()
    try:
        if text.startswith("{"):
            parsed = json.loads(text)
        else:
            parsed = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, _, value = part.partition("=")
                parsed[key.strip()] = int(value)
    except ValueError as exc:
        raise InvalidRequestError(
            f"limit_mm_per_prompt must be JSON like '{{\"image\": 2}}', got {text!r}.",
            param="limit_mm_per_prompt",
        ) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequestError(
            "limit_mm_per_prompt must be a JSON object.", param="limit_mm_per_prompt"
        )
    return parsed


def check_mm_limits(limits: dict[str, Any]) -> None:
    for key, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidRequestError(
                f"limit_mm_per_prompt[{key!r}] must be a non-negative integer, got {value!r}.",
                param="limit_mm_per_prompt",
            )


def resolve_mm_limits(
    hf_config: dict[str, Any], requested: dict[str, int] | None
) -> dict[str, int]:
    """Per-modality limits for this model: the media modalities its registry spec accepts
    (none for a text-only model), defaults overridden by what was requested."""
    spec = find_spec(list(hf_config.get("architectures") or []))
    media = sorted((spec.modalities if spec is not None else frozenset()) - {"text"})
    requested = requested or {}
    return {m: requested.get(m, DEFAULT_ITEMS_PER_PROMPT.get(m, 1)) for m in media}


def _json_object(text: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{param} must be a JSON object.", param=param)
    return value


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` on top; where both hold an object, the two merge recursively."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_hf_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict; a malformed file is a clear UnsupportedModelError."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(
            f"{model_dir / 'config.json'} is not readable JSON: {exc}"
        ) from exc
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{model_dir / 'config.json'} does not hold a JSON object.")
    if not config.get("architectures") and config.get("model_type") in _CAUSAL_LM_BY_MODEL_TYPE:
        # Some converters write model_type only; transformers then picks the causal LM.
        config["architectures"] = [_CAUSAL_LM_BY_MODEL_TYPE[config["model_type"]]]
    return config


_CAUSAL_LM_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "opt": "OPTForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "granite": "GraniteForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


def _check_rope_scaling(hf_config: dict[str, Any]) -> None:
    """An unknown or incomplete rope_scaling fails here (one line at start-up), not when
    the model's rope table is built inside a server's lifespan."""
    from mono_llm.core.layers.rotary import rope_settings

    config = hf_config.get("text_config") or hf_config
    theta, scaling = rope_settings(config)
    if scaling is None:
        return
    from mono_llm.kernels import rope_cos_sin_cache

    # LongRoPE lists one factor per rotated frequency: validate at the dims they imply.
    factors = scaling.get("short_factor")
    dim = 2 * len(factors) if isinstance(factors, list) and factors else 8
    try:
        rope_cos_sin_cache(dim, 2, theta, scaling)  # a 2-position table: validation only
    except (ValueError, KeyError, TypeError) as exc:
        raise UnsupportedModelError(f"rope_scaling {scaling} is not supported: {exc}") from exc


def _check_not_quantized(hf_config: dict[str, Any], model_dir: Path) -> None:
    """Quantized checkpoints (AWQ, GPTQ, FP8, bitsandbytes...) store packed tensors under
    other names; loading one would fail tensor by tensor, so refuse it up front."""
    quantization = hf_config.get("quantization_config") or (hf_config.get("text_config") or {}).get(
        "quantization_config"
    )
    if quantization:
        method = (
            quantization.get("quant_method", "unknown")
            if isinstance(quantization, dict)
            else quantization
        )
        raise UnsupportedModelError(
            f"{model_dir} is a quantized checkpoint (quantization_config: {method}); mono-llm "
            "loads unquantized float32/float16/bfloat16 weights only."
        )


_RUNNERS = ("auto", "generate", "pooling")
_CONVERSIONS = ("auto", "none", "embed", "classify")


def _task_of_runner(task: str, runner: str, convert: str) -> str:
    """One task from vLLM's two spellings (`--runner`/`--convert`, and the older `--task`),
    refusing combinations that contradict each other."""
    if runner not in _RUNNERS:
        raise InvalidRequestError(
            f"runner must be one of {', '.join(_RUNNERS)}; got {runner!r}.", param="runner"
        )
    if convert not in _CONVERSIONS:
        raise InvalidRequestError(
            f"convert must be one of {', '.join(_CONVERSIONS)}; got {convert!r}.", param="convert"
        )
    if convert in ("embed", "classify"):
        if runner == "generate":
            raise InvalidRequestError(
                f"convert={convert} turns the model into a pooling model; it cannot be combined "
                "with runner=generate.",
                param="convert",
            )
        implied = convert
    elif runner == "generate":
        implied = "generate"
    elif runner == "pooling":
        implied = "pooling"
    else:
        return task
    pooling_tasks = ("embed", "classify", "score")
    compatible = task in ("auto", implied) or (implied == "pooling" and task in pooling_tasks)
    if not compatible:
        raise InvalidRequestError(
            f"task={task} contradicts runner={runner}, convert={convert}; give one of them.",
            param="task",
        )
    return implied if task == "auto" else task


def sliding_window_in_use(hf_config: dict[str, Any]) -> int | None:
    """The attention window when some layer of the model really uses one, else None.

    Mistral v0.1 style configs set `sliding_window` alone; Qwen2/Qwen3 also carry
    `use_sliding_window` (false in every released checkpoint) and, in transformers 5,
    `layer_types`. A window at least as long as the trained context changes nothing.
    """
    config = hf_config.get("text_config") or hf_config
    window = config.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or not config.get("use_sliding_window", True):
        return None
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list):  # spelled out per layer: it decides
        if "sliding_attention" not in layer_types:
            return None
    elif (  # Qwen2/Qwen3: only layers at index >= max_window_layers use the window.
        "use_sliding_window" in config
        and isinstance(config.get("max_window_layers"), int)
        and isinstance(config.get("num_hidden_layers"), int)
        and config["max_window_layers"] >= config["num_hidden_layers"]
    ):
        return None
    trained = _trained_context_length(hf_config)
    if trained is not None and window >= trained:
        return None
    return window


def _cap_to_sliding_window(
    hf_config: dict[str, Any], max_model_len: int, requested: int | None
) -> int:
    """Most model classes apply no sliding window. Within `window` tokens, windowed and full
    attention are the same computation, so capping the context there keeps results exact.
    Classes whose registry entry says they apply the window (Gemma 2) keep the full context."""
    window = sliding_window_in_use(hf_config)
    if window is None or max_model_len <= window:
        return max_model_len
    spec = find_spec(list(hf_config.get("architectures") or []))
    if spec is not None and spec.sliding_window:
        return max_model_len
    if requested is not None:
        raise InvalidRequestError(
            f"max_model_len={requested} is longer than this model's sliding attention window "
            f"({window} tokens), which mono-llm does not implement; use max_model_len <= "
            f"{window} (the default caps it there).",
            param="max_model_len",
        )
    logger.warning(
        "This model uses sliding-window attention (window %d tokens), which mono-llm does not "
        "implement: max_model_len is capped from %d to %d so that every result stays exact.",
        window,
        max_model_len,
        window,
    )
    return window


def _resolve_dtype(requested: str, hf_config: dict[str, Any], device: str) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    text_config = hf_config.get("text_config") or {}
    name = (
        hf_config.get("torch_dtype")
        or hf_config.get("dtype")
        or text_config.get("torch_dtype")
        or text_config.get("dtype")
        or "float32"
    )
    dtype = _DTYPES.get(str(name).removeprefix("torch."), torch.float32)
    if dtype == torch.float32 and device == "cuda":
        # As vLLM: a float32 checkpoint runs in half precision on GPUs (tensor cores).
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dtype


def _trained_context_length(hf_config: dict[str, Any]) -> int | None:
    config = hf_config.get("text_config") or hf_config
    for key in _CONTEXT_LENGTH_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            scaling = config.get("rope_scaling") or {}
            factor = (
                scaling.get("factor")
                if scaling.get("rope_type", scaling.get("type")) == "yarn"
                else None
            )
            if factor and "original_max_position_embeddings" in scaling:
                return int(scaling["original_max_position_embeddings"] * factor)
            return value
    return None


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass, by field name (for CLI help text)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def engine_arg_names() -> list[str]:
    return [f.name for f in fields(EngineArgs)]


def default_cache_dir() -> Path:
    """Where mono-llm keeps generated files (fixture models, compiled artefacts)."""
    root = os.environ.get("MONO_LLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mono-llm"
    )
    return Path(root)
