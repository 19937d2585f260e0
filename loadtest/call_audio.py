"""A live call's audio for the load tools, numpy only (the Locust users import it under gevent).

One second of voiced bursts (a 140 Hz buzz with harmonics, modulated at syllable rate) and one
of low noise, alternating, as PCM16 at 16 kHz: enough like speech that a VAD's events fire,
and the same every run.
"""

from __future__ import annotations

import numpy as np


def call_audio(seconds: float = 8.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``seconds`` of the call as int16 samples at ``rate``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    buzz = np.sin(2 * np.pi * 140 * np.arange(1, 12)[:, None] * t).T @ (1.0 / np.arange(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (np.floor(t) % 2 == 0)
    signal = 0.2 * buzz * syllables + rng.normal(0, 0.005, len(t))
    pcm: np.ndarray = (np.clip(signal, -1, 1) * 32767).astype(np.int16)
    return pcm
