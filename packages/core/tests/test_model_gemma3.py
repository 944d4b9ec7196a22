"""Gemma 3 text at the published sizes, on the meta device (shapes only, no memory).

The tiny-gemma3 fixture checks the arithmetic against transformers; these check what only the
real sizes show: every tensor of transformers' Gemma3ForCausalLM state dict lands in one of our
parameters, the released 5 sliding : 1 full layer pattern, and that the released config.json
spelling (top-level rope_theta / rope_local_base_freq / rope_scaling, sliding_window_pattern)
gives the same settings as the one transformers 5 writes (rope_parameters, layer_types). On a
GPU, dummy weights of the small sizes run through the CUDA graphs as eagerly.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import torch

from mono_llm.core.config import EngineArgs
from mono_llm.core.worker.batch import LogitsWanted, ModelBatch, SequenceSlice
from mono_llm.core.worker.model_runner import ModelRunner

# Shape fields of the published config.json files (gemma-3-270m and -1b are gemma3_text
# checkpoints; the 4b, 12b and 27b rows are the text_config of the multimodal releases, whose
# full layers scale rope linearly by 8).
PUBLISHED: dict[str, dict[str, Any]] = {
    "gemma-3-270m": {"hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                     "query_pre_attn_scalar": 256, "sliding_window": 512, "vocab_size": 262144,
                     "max_position_embeddings": 32768, "rope_scaling": None},
    "gemma-3-1b": {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                   "query_pre_attn_scalar": 256, "sliding_window": 512, "vocab_size": 262144,
                   "max_position_embeddings": 32768, "rope_scaling": None},
    "gemma-3-4b-text": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                        "query_pre_attn_scalar": 256, "sliding_window": 1024,
                        "vocab_size": 262208, "max_position_embeddings": 131072,
                        "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    "gemma-3-27b-text": {"hidden_size": 5376, "intermediate_size": 21504,
                         "num_hidden_layers": 62, "num_attention_heads": 32,
                         "num_key_value_heads": 16, "head_dim": 128,
                         "query_pre_attn_scalar": 168, "sliding_window": 1024,
                         "vocab_size": 262208, "max_position_embeddings": 131072,
                         "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
}  # fmt: skip
ARCH = "Gemma3ForCausalLM"


def released_config(shape: str) -> dict[str, Any]:
    """The config.json of a released checkpoint of this size, in its own spelling."""
    return {
        "architectures": [ARCH],
        "model_type": "gemma3_text",
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "sliding_window_pattern": 6,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        **PUBLISHED[shape],
    }


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_published_shapes_load_every_hf_tensor_exactly(shape: str) -> None:
    import transformers

    from mono_llm.core.models.llama import LlamaForCausalLM, LlamaSettings
    from mono_llm.core.models.loader import mapped_weights
    from mono_llm.core.models.registry import resolve_spec

    released = released_config(shape)
    config = transformers.Gemma3TextConfig(**released)
    saved = config.to_dict()  # transformers 5's spelling: rope_parameters, layer_types
    assert "rope_parameters" in saved and "layer_types" in saved
    settings = LlamaSettings.from_hf(saved, ARCH, 4096)
    assert LlamaSettings.from_hf(released, ARCH, 4096) == settings
    with torch.device("meta"):
        hf = transformers.Gemma3ForCausalLM(config)
        ours = LlamaForCausalLM(settings)
    state = hf.state_dict()
    assert "model.layers.0.self_attn.q_norm.weight" in state
    loaded = ours.load_weights(mapped_weights(iter(state.items()), resolve_spec([ARCH]).weights))
    assert loaded == ours.expected_weights()
    # Tied head: the embedding counted once on both sides.
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())

    layers = released["num_hidden_layers"]
    full = [i for i in range(layers) if (i + 1) % 6 == 0]
    assert [i for i, kind in enumerate(saved["layer_types"]) if kind == "full_attention"] == full
    assert settings.attention_scale == pytest.approx(released["query_pre_attn_scalar"] ** -0.5)
    assert settings.attn_softcap is None and settings.final_softcap is None
    global_rope, local_rope = ours.rotary_embeddings()
    assert (global_rope.base, global_rope.rope_scaling) == (1e6, released["rope_scaling"])
    assert (local_rope.base, local_rope.rope_scaling) == (1e4, None)
    for i, layer in enumerate(ours.model.layers):
        attention = layer.self_attn
        is_full = i in full
        assert attention.attn.sliding_window == (None if is_full else released["sliding_window"])
        assert attention._rotary[0] is (global_rope if is_full else local_rope)
        assert attention.qk_norm and attention.q_norm.unit_offset


def _published_folder(shape: str, dest: Path) -> Path:
    """tiny-gemma3's tokenizer beside the config.json of a published size, no weights (the
    runner's load_format="dummy" fills them)."""
    import transformers

    from mono_llm.core.testing.variants import derive_model

    saved = transformers.Gemma3TextConfig(**released_config(shape)).to_dict()

    def as_published(config: dict[str, Any]) -> None:
        config.clear()
        config.update(saved, architectures=[ARCH], torch_dtype="float32")

    return derive_model("tiny-gemma3", dest, config=as_published, remove=("model.safetensors",))


def _runner(folder: Path, device: str, eager: bool, **memory: Any) -> ModelRunner:
    args = EngineArgs(
        model=str(folder), device=device, dtype="float32", load_format="dummy",
        max_num_seqs=8, max_model_len=2048, max_num_batched_tokens=2048, enforce_eager=eager,
        cuda_graph_max_prefill_tokens=0 if eager else 64, **memory,
    )  # fmt: skip
    return ModelRunner(args.create_engine_config())


def _session(runner: ModelRunner) -> list[torch.Tensor]:
    """A 1500-token prefill alone (past the 512-token window of the sliding layers), two short
    prompts together (the 64-token prefill graph), 7 decode steps of fixed tokens for the three
    (the 4-sequence decode graph), then a 10-token prefill (the 16-token graph). Returns every
    step's logits."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 260000, (n,), generator=gen).tolist() for n in (1500, 7, 33)]
    tables, next_block = [], 0
    for p in prompts:
        count = -(-(len(p) + 7) // runner.block_size)
        tables.append(list(range(next_block, next_block + count)))
        next_block += count
    slices = [SequenceSlice(p, 0, t, LogitsWanted.LAST) for p, t in zip(prompts, tables)]
    out = [runner.execute(ModelBatch(slices[:1])).cpu()]
    out.append(runner.execute(ModelBatch(slices[1:])).cpu())
    lengths = [len(p) for p in prompts]
    for step in range(7):
        decode = []
        for i, table in enumerate(tables):
            decode.append(SequenceSlice([1000 + 7 * step + i], lengths[i], table))
            lengths[i] += 1
        out.append(runner.execute(ModelBatch(decode)).cpu())
    extra = SequenceSlice(list(range(3, 13)), 0, [next_block], LogitsWanted.ALL)
    out.append(runner.execute(ModelBatch([extra])).cpu())
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", ["gemma-3-270m", "gemma-3-1b"])
def test_published_shapes_graphed_on_cuda_equal_eager(shape: str, tmp_path: Path) -> None:
    """Dummy weights of a published size on the GPU: decode and prefill CUDA graphs, which
    capture both rotary tables and the per-layer windows, give the eager logits."""
    folder = _published_folder(shape, tmp_path / shape)
    graphs = _runner(folder, "cuda", eager=False, gpu_memory_utilization=0.4)
    assert graphs.decode_graphs
    got = _session(graphs)
    assert graphs.num_prefill_graph_replays == 2
    del graphs
    gc.collect()
    torch.cuda.empty_cache()
    expected = _session(_runner(folder, "cuda", eager=True, gpu_memory_utilization=0.4))
    for a, b in zip(got, expected, strict=True):
        assert torch.isfinite(a).all() and b.std() > 0
        # Dummy weights give small logits: the tolerance follows their scale.
        torch.testing.assert_close(a, b, atol=1e-3 * float(b.abs().max()), rtol=1e-3)
