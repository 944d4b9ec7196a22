"""CTranslate2 -> HF Whisper conversion, checked with transformers itself.

The fast tests write CTranslate2 files here (the tiny random Whisper, fused and renamed the
way CTranslate2 lays it out) and check that conversion gives the same weights and logits back;
the real-weight tests transcribe an espeak-ng sentence with the converted tiny.en (and, marked
slow, transcribe and translate with the converted multilingual base).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from mono_llm.core.testing import fixture_path, whisper_checkpoint_path
from mono_llm.core.testing.ct2_whisper import (
    CT2FormatError,
    convert_ct2_whisper,
    read_ct2_model,
)
from mono_llm.core.testing.whisper import build_tiny_whisper

REPO = Path(__file__).resolve().parents[3]
DTYPE_IDS = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}


# ----------------------------------------------------------------------------- a CT2 writer


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def write_model_bin(
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    *,
    spec: str = "WhisperSpec",
    version: int = 6,
) -> bytes:
    """model.bin bytes in CTranslate2's layout (sorted names, then aliases)."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name in sorted(variables):
        value = np.require(variables[name], requirements="C")  # keeps 0-d scalars 0-d
        out += [_string(name), struct.pack("<B", value.ndim)]
        out += [struct.pack("<I", dim) for dim in value.shape]
        if value.dtype == np.uint16:  # bfloat16 bits
            dtype_id = 5
        else:
            dtype_id = DTYPE_IDS[value.dtype.type]
        out += [struct.pack("<B", dtype_id), struct.pack("<I", value.nbytes), value.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def hf_to_ct2(state: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """The inverse of the converter's mapping: HF Whisper names -> CTranslate2's."""
    out: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = state[f"{src}.weight"], state[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = state[f"{src}.weight"], state[f"{src}.bias"]

    def fused(dst: str, srcs: list[str]) -> None:
        out[f"{dst}/weight"] = np.concatenate([state[f"{s}.weight"] for s in srcs])
        biases = [
            state.get(f"{s}.bias", np.zeros(state[f"{s}.weight"].shape[0], np.float32))
            for s in srcs
        ]
        out[f"{dst}/bias"] = np.concatenate(biases)

    for side in ("encoder", "decoder"):
        out[f"{side}/position_encodings/encodings"] = state[f"model.{side}.embed_positions.weight"]
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"{side}/num_heads"] = np.array(config[f"{side}_attention_heads"], dtype=np.int16)
        for i in range(config[f"{side}_layers"]):
            s, d = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            fused(f"{d}/self_attention/linear_0", [f"{s}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            linear(f"{d}/ffn/linear_0", f"{s}.fc1")
            linear(f"{d}/ffn/linear_1", f"{s}.fc2")
            if side == "decoder":
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
                linear(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
                fused(f"{d}/attention/linear_1", [f"{s}.encoder_attn.{p}_proj" for p in "kv"])
                linear(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    out["decoder/scale_embeddings"] = np.array(0, dtype=np.int8)
    out["decoder/activation"] = np.array(1, dtype=np.int8)
    return out


@pytest.fixture(scope="module")
def tiny_whisper() -> Path:
    return fixture_path("tiny-whisper")


@pytest.fixture(scope="module")
def tiny_ct2(tiny_whisper, tmp_path_factory) -> Path:
    """tiny-whisper as a CTranslate2 folder (float16, as CTranslate2 usually stores Whisper)."""
    folder = tmp_path_factory.mktemp("ct2")
    config = json.loads((tiny_whisper / "config.json").read_text())
    state = load_file(tiny_whisper / "model.safetensors")
    variables = {
        name: value.astype(np.float16) if value.dtype == np.float32 else value
        for name, value in hf_to_ct2(state, config).items()
    }
    (folder / "model.bin").write_bytes(
        write_model_bin(variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    )
    generation = json.loads((tiny_whisper / "generation_config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps(
            {
                "suppress_ids": [5, 6],
                "suppress_ids_begin": generation["begin_suppress_tokens"],
                "alignment_heads": generation["alignment_heads"],
                "lang_ids": list(generation["lang_to_id"].values()),
            }
        )
    )
    # CTranslate2 folders carry only tokenizer.json (without the timestamp tokens).
    tokenizer = json.loads((tiny_whisper / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["special"]]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return folder


# ----------------------------------------------------------------------------- model.bin


def test_reader_handles_dtypes_aliases_and_quantized_weights():
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    scale = np.array([4.0, 2.0], dtype=np.float32)
    bf16 = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    data = write_model_bin(
        {
            "a/float32": weight,
            "a/float16": weight.astype(np.float16),
            "a/bfloat16": bf16,
            "q/weight": np.rint(weight * scale[:, None]).astype(np.int8),
            "q/weight_scale": scale,
            "h/weight": np.rint(weight * 8).astype(np.int16),
            "h/weight_scale": np.array(8.0, dtype=np.float32),
            "n/num_heads": np.array(6, dtype=np.int16),
        },
        {"b/alias": "a/float32"},
    )
    spec, revision, variables = read_ct2_model(data)
    assert (spec, revision) == ("WhisperSpec", 3)
    np.testing.assert_array_equal(variables["a/float16"], weight.astype(np.float16))
    np.testing.assert_array_equal(variables["a/bfloat16"], [1.5, -2.0])
    np.testing.assert_array_equal(variables["b/alias"], weight)
    np.testing.assert_allclose(
        variables["q/weight"], np.rint(weight * scale[:, None]) / scale[:, None]
    )
    np.testing.assert_allclose(variables["h/weight"], weight)
    assert "q/weight_scale" not in variables
    assert int(variables["n/num_heads"]) == 6


def test_reader_refuses_bad_files():
    data = write_model_bin({"x": np.ones(4, np.float32)})
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(data[:-8])
    with pytest.raises(CT2FormatError, match="binary version 99"):
        read_ct2_model(write_model_bin({}, version=99))


def test_converter_refuses_a_non_whisper_model(tmp_path, tiny_ct2):
    shutil.copy(tiny_ct2 / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "model.bin").write_bytes(write_model_bin({}, spec="TransformerSpec"))
    with pytest.raises(CT2FormatError, match="TransformerSpec"):
        convert_ct2_whisper(tmp_path, tmp_path / "out")
    (tmp_path / "model.bin").write_bytes(
        write_model_bin({"decoder/strange": np.ones(2, np.float32)})
    )
    with pytest.raises(CT2FormatError):
        convert_ct2_whisper(tmp_path, tmp_path / "out")


# ----------------------------------------------------------------------------- round trip


def test_round_trip_gives_the_same_model(tiny_whisper, tiny_ct2, tmp_path):
    out = convert_ct2_whisper(tiny_ct2, tmp_path / "hf", multilingual=True)
    original = load_file(tiny_whisper / "model.safetensors")
    converted = load_file(out / "model.safetensors")
    assert set(converted) == set(original) - {"proj_out.weight"}  # tied to the embeddings
    for name, value in original.items():
        if name in converted:
            np.testing.assert_array_equal(
                converted[name], value.astype(np.float16).astype(np.float32)
            )

    config = json.loads((out / "config.json").read_text())
    reference_config = json.loads((tiny_whisper / "config.json").read_text())
    for key in ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers",
                "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                "max_source_positions", "max_target_positions", "decoder_start_token_id"):  # fmt: skip
        assert config[key] == reference_config[key], key

    generation = json.loads((out / "generation_config.json").read_text())
    reference_generation = json.loads((tiny_whisper / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [5, 6]
    for key in ("lang_to_id", "task_to_id", "no_timestamps_token_id", "alignment_heads",
                "decoder_start_token_id", "eos_token_id", "begin_suppress_tokens"):  # fmt: skip
        assert generation[key] == reference_generation[key], key

    # transformers gives the same logits on both folders (weights rounded to float16 alike).
    torch.manual_seed(0)
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[generation["decoder_start_token_id"], 520, 40, 41]])
    logits = []
    for folder in (tiny_whisper, out):
        model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
        if folder == tiny_whisper:
            with torch.no_grad():
                for param in model.parameters():
                    param.copy_(param.half().float())
        with torch.no_grad():
            logits.append(model(input_features=features, decoder_input_ids=decoder_ids).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)

    # The tokenizer gained the timestamp tokens, at the ids after <|notimestamps|>.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == config["vocab_size"]
    first = generation["no_timestamps_token_id"] + 1
    assert tokenizer.convert_ids_to_tokens([first, first + 1500]) == ["<|0.00|>", "<|30.00|>"]


def test_script_converts_standalone(tiny_ct2, tmp_path):
    (tmp_path / "split").mkdir()
    data = (tiny_ct2 / "model.bin").read_bytes()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_ct2 / name, tmp_path / "split" / name)
    (tmp_path / "split" / "model.bin.part1").write_bytes(data[: len(data) // 2])
    (tmp_path / "elsewhere.part2").write_bytes(data[len(data) // 2 :])
    script = REPO / "scripts" / "whisper_from_ct2.py"
    # No PYTHONPATH: from a checkout the script needs no installed mono-llm.
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "split"), str(tmp_path / "out"),
         "--part", str(tmp_path / "split" / "model.bin.part1"),
         "--part", str(tmp_path / "elsewhere.part2"), "--dtype", "source"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    state = load_file(tmp_path / "out" / "model.safetensors")
    assert state["model.decoder.embed_tokens.weight"].dtype == np.float16
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(tmp_path / "none")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "no model.bin" in bad.stderr


def test_tiny_whisper_fixture_has_whisper_token_layout(tiny_whisper):
    generation = json.loads((tiny_whisper / "generation_config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_whisper)
    config = transformers.AutoConfig.from_pretrained(tiny_whisper)
    assert len(tokenizer) == config.vocab_size
    assert generation["is_multilingual"] is True
    assert set(generation["lang_to_id"]) == {
        "<|en|>",
        "<|de|>",
        "<|fr|>",
        "<|es|>",
        "<|zh|>",
        "<|ja|>",
    }
    assert (
        tokenizer.convert_tokens_to_ids("<|transcribe|>") == generation["task_to_id"]["transcribe"]
    )
    assert config.vocab_size == generation["no_timestamps_token_id"] + 1 + 1501
    assert fixture_path("tiny-whisper-128") != tiny_whisper
    assert (
        transformers.AutoConfig.from_pretrained(fixture_path("tiny-whisper-128")).num_mel_bins
        == 128
    )


def test_tiny_whisper_build_is_deterministic(tmp_path):
    build_tiny_whisper("tiny-whisper", tmp_path / "a")
    build_tiny_whisper("tiny-whisper", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ----------------------------------------------------------------------------- real weights


def speak(text: str, tmp_path: Path, voice: str = "en") -> np.ndarray:
    """espeak-ng's reading of `text` at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; `make deps` does it)")
    import soundfile
    import soxr

    path = tmp_path / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True
    )
    samples, rate = soundfile.read(path, dtype="float32")
    return soxr.resample(samples, rate, 16_000).astype(np.float32)


def word_error_rate(hypothesis: str, reference: str) -> float:
    hyp, ref = (re.findall(r"[a-z0-9']+", s.lower()) for s in (hypothesis, reference))
    distance = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        previous, distance[0] = distance[0], i
        for j, hyp_word in enumerate(hyp, 1):
            previous, distance[j] = (
                distance[j],
                min(distance[j] + 1, distance[j - 1] + 1, previous + (ref_word != hyp_word)),
            )
    return distance[len(hyp)] / max(len(ref), 1)


def transcribe(folder: Path, audio: np.ndarray, **generate_kwargs) -> str:
    processor = transformers.WhisperProcessor.from_pretrained(folder)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, **generate_kwargs)
    return processor.batch_decode(ids, skip_special_tokens=True)[0]


def real_checkpoint(name: str) -> Path:
    try:
        return whisper_checkpoint_path(name)
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


def test_word_error_rate():
    assert word_error_rate("The quick brown fox.", "the quick brown fox") == 0.0
    assert word_error_rate("the quick fox jumped", "the quick brown fox jumps") == 0.4


def test_converted_tiny_en_transcribes_speech(tmp_path):
    folder = real_checkpoint("tiny.en")
    sentence = "The quick brown fox jumps over the lazy dog."
    text = transcribe(folder, speak(sentence, tmp_path))
    assert word_error_rate(text, sentence) <= 0.2, text

    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["is_multilingual"] is False and "lang_to_id" not in generation
    assert generation["no_timestamps_token_id"] == 50362
    assert generation["forced_decoder_ids"] == [[1, 50362]]
    assert generation["decoder_start_token_id"] == 50257 and generation["eos_token_id"] == 50256
    assert generation["alignment_heads"] == [
        [1, 0],
        [2, 0],
        [2, 5],
        [3, 0],
        [3, 1],
        [3, 2],
        [3, 3],
        [3, 4],
    ]
    assert generation["begin_suppress_tokens"] == [220, 50256]
    assert json.loads((folder / "preprocessor_config.json").read_text())["feature_size"] == 80


@pytest.mark.slow
def test_converted_base_transcribes_and_translates(tmp_path):
    folder = real_checkpoint("base")
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["is_multilingual"] is True
    assert generation["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert generation["lang_to_id"]["<|en|>"] == 50259 and len(generation["lang_to_id"]) == 99
    assert generation["no_timestamps_token_id"] == 50363

    sentence = (
        "Artificial intelligence is changing the way people work. "
        "Many tasks that once required hours can now be done in minutes."
    )
    text = transcribe(folder, speak(sentence, tmp_path), language="en", task="transcribe")
    assert word_error_rate(text, sentence) <= 0.1, text

    german = speak(
        "Guten Morgen. Das Wetter ist heute sehr schön, und wir gehen in den Park.", tmp_path, "de"
    )
    translated = transcribe(folder, german, task="translate")
    words = set(re.findall(r"[a-z]+", translated.lower()))
    assert {"good", "morning", "park"} <= words, translated
    assert not words & {"guten", "morgen", "das", "und"}, translated
