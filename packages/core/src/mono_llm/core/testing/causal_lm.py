"""Deterministic tiny causal LMs in HF format (random weights, trained tokenizer)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mono_llm.core.testing import chat_templates
from mono_llm.core.testing.tokenizer_builder import train_byte_level_bpe

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|reserved_special_token_0|>",
]
MISTRAL_SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
PHI3_SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The released Gemma ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# Granite 3: <|end_of_text|> (id 0) is BOS, EOS and padding at once.
GRANITE_SPECIALS = ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"]
OLMO2_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class CausalLMSpec:
    """What a tiny causal-LM fixture looks like; one per model family."""

    config_class: str  # name in transformers
    architecture: str
    model_type: str
    special_tokens: list[str]
    bos_token: str | None
    eos_token: str
    pad_token: str | None
    chat_template: str
    add_bos: bool
    # Extra EOS ids in generation_config (Llama 3 stops on <|eot_id|> as well as <|end_of_text|>).
    extra_eos_tokens: tuple[str, ...] = ()
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def train_tokenizer(self, out_dir: Path) -> int:
        """Write this family's tokenizer files into `out_dir`; returns the vocabulary size
        (shared by the causal LMs and the decoder classifier built on tiny-qwen2)."""
        return train_byte_level_bpe(
            out_dir,
            special_tokens=self.special_tokens,
            vocab_size=VOCAB_SIZE,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            pad_token=self.pad_token,
            chat_template=self.chat_template,
            add_bos=self.add_bos,
        )


SPECS: dict[str, CausalLMSpec] = {
    "tiny-llama": CausalLMSpec(
        config_class="LlamaConfig",
        architecture="LlamaForCausalLM",
        model_type="llama",
        special_tokens=LLAMA3_SPECIALS,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=None,
        chat_template=chat_templates.LLAMA3,
        add_bos=True,
        extra_eos_tokens=("<|end_of_text|>",),
        config_overrides={
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
        },
    ),
    "tiny-mistral": CausalLMSpec(
        config_class="MistralConfig",
        architecture="MistralForCausalLM",
        model_type="mistral",
        special_tokens=MISTRAL_SPECIALS,
        bos_token="<s>",
        eos_token="</s>",
        pad_token=None,
        chat_template=chat_templates.MISTRAL,
        add_bos=True,
        config_overrides={"sliding_window": None, "rope_theta": 1000000.0},
    ),
    "tiny-qwen2": CausalLMSpec(
        config_class="Qwen2Config",
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        special_tokens=CHATML_SPECIALS,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_templates.CHATML,
        add_bos=False,
        extra_eos_tokens=("<|endoftext|>",),
        config_overrides={"rope_theta": 1000000.0, "use_sliding_window": False},
    ),
    "tiny-qwen3": CausalLMSpec(
        config_class="Qwen3Config",
        architecture="Qwen3ForCausalLM",
        model_type="qwen3",
        special_tokens=CHATML_SPECIALS,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_templates.CHATML,
        add_bos=False,
        extra_eos_tokens=("<|endoftext|>",),
        config_overrides={"rope_theta": 1000000.0, "head_dim": 32, "use_sliding_window": False},
    ),
    # Phi-4-mini's switches: 3/4 of each head rotated, LongRoPE, tied embeddings, fused
    # qkv_proj / gate_up_proj in the checkpoint. The original context (512) is longer than the
    # tests' max_model_len, so the short factors apply, as they do in transformers for every
    # sequence within it; `phi3_long_context` derives the variant that crosses it.
    "tiny-phi3": CausalLMSpec(
        config_class="Phi3Config",
        architecture="Phi3ForCausalLM",
        model_type="phi3",
        special_tokens=PHI3_SPECIALS,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        chat_template=chat_templates.PHI3,
        add_bos=False,
        extra_eos_tokens=("<|end|>",),
        config_overrides={
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 512,
            "rope_scaling": {
                "rope_type": "longrope",
                # One factor per rotated frequency: head_dim 16 * 0.75 = 12 dims, 6 pairs.
                "short_factor": [1.0, 1.05, 1.2, 1.6, 2.5, 3.0],
                "long_factor": [1.0, 1.5, 3.0, 6.0, 12.0, 20.0],
            },
            "tie_word_embeddings": True,
            "sliding_window": None,
        },
    ),
    # Instruction-tuned layout: the tokenizer's EOS is <eos>, turns end with <end_of_turn>.
    # head_dim 32 != hidden / heads (16), as gemma-7b's 256 != 3072 / 16; tied head.
    "tiny-gemma": CausalLMSpec(
        config_class="GemmaConfig",
        architecture="GemmaForCausalLM",
        model_type="gemma",
        special_tokens=GEMMA_SPECIALS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        chat_template=chat_templates.GEMMA,
        add_bos=True,
        extra_eos_tokens=("<end_of_turn>",),
        config_overrides={"head_dim": 32, "tie_word_embeddings": True},
    ),
    # Gemma 2 with every switch biting at this size: a 16-token window on layer 0 (prompts
    # and replies run past it), caps small enough to change the scores and the logits, and
    # an attention scale from query_pre_attn_scalar (24) rather than head_dim (32).
    "tiny-gemma2": CausalLMSpec(
        config_class="Gemma2Config",
        architecture="Gemma2ForCausalLM",
        model_type="gemma2",
        special_tokens=GEMMA_SPECIALS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        chat_template=chat_templates.GEMMA,
        add_bos=True,
        extra_eos_tokens=("<end_of_turn>",),
        config_overrides={
            "head_dim": 32,
            "tie_word_embeddings": True,
            "sliding_window": 16,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 5.0,
        },
    ),
    # Granite 3 with every multiplier far from 1, so dropping (or misplacing) any one of them
    # changes the logits: attention scale 0.5 (head_dim**-0.5 would be 0.25).
    "tiny-granite": CausalLMSpec(
        config_class="GraniteConfig",
        architecture="GraniteForCausalLM",
        model_type="granite",
        special_tokens=GRANITE_SPECIALS,
        bos_token="<|end_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        chat_template=chat_templates.GRANITE,
        add_bos=False,
        config_overrides={
            "rope_theta": 10000000.0,
            "embedding_multiplier": 6.0,
            "residual_multiplier": 0.4,
            "attention_multiplier": 0.5,
            "logits_scaling": 3.0,
        },
    ),
    # OLMo 2 (instruct tokenizer layout): norms after attention and the MLP, q/k norms across
    # all heads; the tokenizer's <|endoftext|> is BOS and EOS.
    "tiny-olmo2": CausalLMSpec(
        config_class="Olmo2Config",
        architecture="Olmo2ForCausalLM",
        model_type="olmo2",
        special_tokens=OLMO2_SPECIALS,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        chat_template=chat_templates.OLMO2,
        add_bos=False,
        config_overrides={"rope_theta": 500000.0, "rms_norm_eps": 1e-6},
    ),
    # Gemma 3 text: one sliding layer (16-token window, prompts run past it, rotary base
    # 10000) and one full layer (base 1e6 with linear scaling by 8, as the 4b+ models), q/k
    # head norms, no caps, query_pre_attn_scalar 24 != head_dim 32. Passed to transformers
    # in the released configs' spelling (rope_theta, rope_local_base_freq, rope_scaling);
    # transformers 5 saves them as rope_parameters per layer type.
    "tiny-gemma3": CausalLMSpec(
        config_class="Gemma3TextConfig",
        architecture="Gemma3ForCausalLM",
        model_type="gemma3_text",
        special_tokens=GEMMA_SPECIALS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        chat_template=chat_templates.GEMMA3,
        add_bos=True,
        extra_eos_tokens=("<end_of_turn>",),
        config_overrides={
            "head_dim": 32,
            "tie_word_embeddings": True,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 24,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        },
    ),
}

# Shape shared by every tiny causal LM: 2 layers, hidden 64, GQA with 4 query / 2 KV heads.
BASE_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    # Wider than HF's 0.02 so logits are spread out and greedy parity has no near-ties.
    "initializer_range": 0.2,
}
VOCAB_SIZE = 1536


def build_causal_lm(name: str, out_dir: Path, *, seed: int = 0) -> None:
    """Write the fixture `name` (a key of SPECS) into the empty folder `out_dir`."""
    import transformers  # heavy import, only when a fixture is built

    spec = SPECS[name]
    vocab = spec.train_tokenizer(out_dir)
    token_id = {tok: i for i, tok in enumerate(spec.special_tokens)}
    eos_ids = [token_id[spec.eos_token]] + [token_id[t] for t in spec.extra_eos_tokens]
    bos_id = token_id[spec.bos_token] if spec.bos_token else None
    config_cls = getattr(transformers, spec.config_class)
    config = config_cls(
        vocab_size=vocab,
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0],
        pad_token_id=token_id.get(spec.pad_token) if spec.pad_token else None,
        **{**BASE_SHAPE, **spec.config_overrides},
    )
    config.architectures = [spec.architecture]
    torch.manual_seed(seed)
    with torch.no_grad():
        model = getattr(transformers, spec.architecture)(config).to(torch.float32)
        # Norm weights at exactly 1 make every layer's RMSNorm trivially symmetric; jitter them
        # so a wrong norm implementation cannot pass by accident.
        for module_name, param in model.named_parameters():
            if "norm" in module_name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir, safe_serialization=True)
    generation = {
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    config_path = out_dir / "config.json"
    saved = json.loads(config_path.read_text())
    saved.setdefault("torch_dtype", "float32")
    config_path.write_text(json.dumps(saved, indent=2))
