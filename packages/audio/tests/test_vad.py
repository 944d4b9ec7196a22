"""EnergyVAD reports speech start and stop at the right times."""

from __future__ import annotations

import numpy as np
import pytest

from mono_llm.audio import EnergyVAD, VADConfig, VADEvent

RATE = 16_000


def test_speech_between_silences(spoken_16k):
    silence = np.zeros(RATE, dtype=np.float32)
    audio = np.concatenate([silence, spoken_16k, silence, silence])
    vad = EnergyVAD(RATE, VADConfig(prefix_padding_ms=300, silence_ms=500))
    events = []
    for start in range(0, audio.shape[0], 1_600):  # 100 ms appends
        events += vad.push(audio[start : start + 1_600])
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    started, stopped = events
    voiced = np.flatnonzero(np.abs(spoken_16k) > 0.01)
    speech_start = RATE + voiced[0]
    speech_end = RATE + voiced[-1]
    # Started points 300 ms before the first voiced frame (to the frame, 30 ms).
    assert abs(started.sample - (speech_start - 0.3 * RATE)) <= 0.06 * RATE
    # Stopped where the trailing silence began (espeak's pauses between words are shorter
    # than silence_ms, so the sentence is one turn).
    assert abs(stopped.sample - speech_end) <= 0.06 * RATE
    assert stopped.time_s(RATE) == pytest.approx(stopped.sample / RATE)
    assert not vad.in_speech


def test_clicks_and_quiet_noise_are_not_speech():
    rng = np.random.default_rng(0)
    audio = 0.001 * rng.standard_normal(3 * RATE).astype(np.float32)  # -60 dBFS noise
    audio[RATE : RATE + 320] = 0.5  # a 20 ms click: shorter than min_speech_ms
    assert EnergyVAD(RATE).push(audio) == []


def test_two_turns():
    tone = (0.3 * np.sin(np.arange(RATE) * 2 * np.pi * 220 / RATE)).astype(np.float32)
    silence = np.zeros(RATE, dtype=np.float32)
    vad = EnergyVAD(RATE, VADConfig(prefix_padding_ms=0, frame_ms=20))  # 1 s = 50 frames
    events = vad.push(np.concatenate([tone, silence, tone, silence]))
    assert events == [
        VADEvent("speech_started", 0),
        VADEvent("speech_stopped", RATE),
        VADEvent("speech_started", 2 * RATE),
        VADEvent("speech_stopped", 3 * RATE),
    ]


def test_invalid_config():
    with pytest.raises(ValueError):
        VADConfig(frame_ms=0)
