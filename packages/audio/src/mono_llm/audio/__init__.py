"""mono_llm.audio: audio inputs for speech models (see the package README).

Decoding (`decode_audio`), resampling (`resample`), Whisper log-mel features
(`log_mel_spectrogram`), long-audio windows (`split_audio`, `join_transcripts`), streaming
(`StreamingChunker`) and voice-activity detection (`EnergyVAD`). Imports neither the engine
nor the server.
"""

from mono_llm.audio._version import __version__
from mono_llm.audio.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DURATION_S,
    AudioLimits,
    DecodedAudio,
    decode_audio,
)
from mono_llm.audio.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLargeError,
    AudioTooLongError,
)
from mono_llm.audio.features import (
    WhisperFeatureConfig,
    default_device,
    log_mel_spectrogram,
    mel_filter_bank,
)
from mono_llm.audio.resample import WHISPER_SAMPLING_RATE, StreamingResampler, resample
from mono_llm.audio.streaming import StreamingChunker, StreamWindow, pcm16_to_float32
from mono_llm.audio.vad import EnergyVAD, VADConfig, VADEvent
from mono_llm.audio.windows import AudioWindow, join_transcripts, quietest_point, split_audio

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DURATION_S",
    "WHISPER_SAMPLING_RATE",
    "AudioDecodeError",
    "AudioError",
    "AudioLimits",
    "AudioTooLargeError",
    "AudioTooLongError",
    "AudioWindow",
    "DecodedAudio",
    "EnergyVAD",
    "StreamWindow",
    "StreamingChunker",
    "StreamingResampler",
    "VADConfig",
    "VADEvent",
    "WhisperFeatureConfig",
    "__version__",
    "decode_audio",
    "default_device",
    "join_transcripts",
    "log_mel_spectrogram",
    "mel_filter_bank",
    "pcm16_to_float32",
    "quietest_point",
    "resample",
    "split_audio",
]
