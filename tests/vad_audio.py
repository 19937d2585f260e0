"""Test audio for the voice-activity tests: real synthetic speech (espeak-ng) with noise between utterances.

espeak-ng speaks each utterance into a WAV (22,050 Hz) and sox resamples it to the rate the VAD
takes, as the eval set is made (``eval_set.speak``); both are Debian packages that the Makefile
installs, as it installs redis-server. The
utterances are joined with stretches of seeded white noise at about -46 dBFS, so the VAD sees
speech, pauses too short to end a segment, and pauses long enough to end one.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from training.tasks.voice_activity.eval_set import require_tools, speak

UTTERANCES = (
    "Hello, this is a test of voice activity detection.",
    "The server keeps the state of every call.",
    "Silence, noise, and then speech again.",
)
#: Noise before, between and after the utterances, in seconds (0.15 s is shorter than a segment's end).
PAUSES_S = (0.8, 1.2, 0.15, 1.0)
NOISE_RMS = 0.005
#: espeak-ng's voice and speed (words per minute) for every utterance.
VOICE, SPEED_WPM = "en", 160


def speech_with_noise(folder: Path, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """The utterances between stretches of noise, as int16 samples at ``rate``."""
    require_tools()
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    for index, pause_s in enumerate(PAUSES_S):
        noise = rng.normal(0.0, NOISE_RMS * 32768, int(pause_s * rate))
        parts.append(np.clip(noise, -32768, 32767).astype(np.int16))
        if index < len(UTTERANCES):
            parts.append(speak(UTTERANCES[index], VOICE, SPEED_WPM, folder, rates=(rate,))[rate])
    return np.concatenate(parts)


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    """Writes ``samples`` (already interleaved, of ``width`` bytes) as a PCM WAV with the standard library."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path
