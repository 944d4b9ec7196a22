"""log_mel_spectrogram equals transformers' WhisperFeatureExtractor (80 and 128 mel bins)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

from mono_llm.audio import WhisperFeatureConfig, log_mel_spectrogram, mel_filter_bank


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filter_bank_matches_transformers(n_mels):
    reference = hf_mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16_000,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filter_bank(n_mels), reference, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", ["short", "30s", "longer"])
def test_features_equal_whisper_feature_extractor(n_mels, seconds, spoken_16k):
    clip = {
        "short": spoken_16k,
        "30s": np.tile(spoken_16k, 20)[:480_000],
        "longer": np.tile(spoken_16k, 20)[:500_000],  # cut to 30 s by both
    }[seconds]
    reference = WhisperFeatureExtractor(feature_size=n_mels)(
        clip, sampling_rate=16_000, return_tensors="np"
    ).input_features
    ours = log_mel_spectrogram(clip, WhisperFeatureConfig(n_mels=n_mels), device="cpu")
    assert ours.shape == reference.shape == (1, n_mels, 3000)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batch_padded_to_the_longest_clip(n_mels, spoken_16k):
    clips = [spoken_16k, spoken_16k[:20_000] * 0.1]
    reference = WhisperFeatureExtractor(feature_size=n_mels)(
        clips, sampling_rate=16_000, padding="longest", return_tensors="np"
    ).input_features
    ours = log_mel_spectrogram(
        clips, WhisperFeatureConfig(n_mels=n_mels), num_samples=None, device="cpu"
    )
    assert ours.shape == reference.shape == (2, n_mels, spoken_16k.shape[0] // 160)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5)


def test_each_clip_is_normalised_alone(spoken_16k):
    alone = log_mel_spectrogram(spoken_16k * 0.01, device="cpu")
    batched = log_mel_spectrogram([spoken_16k, spoken_16k * 0.01], device="cpu")
    torch.testing.assert_close(batched[1:], alone)


def test_accepts_tensors_and_2d_arrays(spoken_16k):
    from_numpy = log_mel_spectrogram(np.stack([spoken_16k, spoken_16k]), device="cpu")
    from_tensor = log_mel_spectrogram(torch.from_numpy(spoken_16k), device="cpu")
    torch.testing.assert_close(from_numpy[1:], from_tensor)
    with pytest.raises(ValueError):
        log_mel_spectrogram(np.zeros((1, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        log_mel_spectrogram([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_features_match_cpu(spoken_16k):
    gpu = log_mel_spectrogram(spoken_16k, WhisperFeatureConfig(n_mels=128), device="cuda")
    assert gpu.device.type == "cuda"
    cpu = log_mel_spectrogram(spoken_16k, WhisperFeatureConfig(n_mels=128), device="cpu")
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_config_from_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_size": 128,
                "hop_length": 160,
                "n_fft": 400,
                "chunk_length": 30,
                "sampling_rate": 16000,
            }
        )
    )
    config = WhisperFeatureConfig.from_preprocessor_config(tmp_path)
    assert config == WhisperFeatureConfig(n_mels=128)
    assert (config.n_samples, config.n_frames) == (480_000, 3000)
