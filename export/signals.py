"""Deterministic test signals for the verification oracle and the tests (numpy only)."""

from __future__ import annotations

import numpy as np


def synth_melody(seconds: float, sample_rate: int, channels: int, seed: int) -> np.ndarray:
    """A deterministic test melody [channels, samples]: a random walk of pure tones (3 per second) plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    notes = 220.0 * 2 ** (rng.integers(0, 24, max(1, int(seconds * 3))) / 12)
    freq = np.repeat(notes, -(-n // len(notes)))[:n]
    tone = 0.4 * np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
    wave = np.stack([tone * (1.0 - 0.2 * c) for c in range(channels)]) + 0.01 * rng.standard_normal((channels, n))
    return wave.astype(np.float32)
