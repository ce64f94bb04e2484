"""MusicGen's codebook delay pattern (codebook k is shifted k steps), mono and stereo.

For N frames the LM runs N + D steps, D = max delay (K-1 mono, K/2-1 stereo). Position [k, t]
of the delayed sequence (t counts from the BOS step) holds a real token when
delay_k < t <= N + delay_k, and the pad/BOS id otherwise.
"""

from __future__ import annotations

import numpy as np


def delays(num_codebooks: int, audio_channels: int = 1) -> np.ndarray:
    """Per-codebook delay; stereo interleaves [1L,1R,2L,2R,...] with delays [0,0,1,1,...]."""
    if audio_channels == 2:
        return np.repeat(np.arange(num_codebooks // 2), 2)
    return np.arange(num_codebooks)


def num_steps(frames: int, num_codebooks: int, audio_channels: int = 1) -> int:
    """Decoder steps (after BOS) needed to produce `frames` full frames."""
    return frames + int(delays(num_codebooks, audio_channels).max())


def valid_mask(frames: int, num_codebooks: int, audio_channels: int = 1) -> np.ndarray:
    """bool [K, steps+1]: True where the delayed sequence (column 0 = BOS) holds a real token."""
    d = delays(num_codebooks, audio_channels)[:, None]
    t = np.arange(num_steps(frames, num_codebooks, audio_channels) + 1)[None, :]
    return (t > d) & (t <= frames + d)


def delay_prompt(
    codes: np.ndarray, columns: int, pad_token_id: int, audio_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt codes [K, P] into a delayed sequence of `columns` columns (column 0 = BOS, the rest padding
    until generated): (sequence int64 [K, columns], known bool [K, columns] where the prompt put a token).
    The prompt's columns are 0..P; column P+1 is the first with an unknown position (codebook 0)."""
    k, p = codes.shape
    known = np.zeros((k, columns), bool)
    known[:, : p + int(delays(k, audio_channels).max()) + 1] = valid_mask(p, k, audio_channels)
    seq = np.full((k, columns), pad_token_id, np.int64)
    d = delays(k, audio_channels)
    for i in range(k):
        seq[i, 1 + d[i] : 1 + d[i] + p] = codes[i]
    return seq, known


def undelay(sequence: np.ndarray, frames: int, audio_channels: int = 1) -> np.ndarray:
    """Delayed sequence [..., K, steps+1] (column 0 = BOS) -> codes [..., K, frames]."""
    k = sequence.shape[-2]
    d = delays(k, audio_channels)
    out = np.empty(sequence.shape[:-1] + (frames,), dtype=sequence.dtype)
    for i in range(k):
        out[..., i, :] = sequence[..., i, 1 + d[i] : 1 + d[i] + frames]
    return out


def frames_for_duration(seconds: float, frame_rate: float) -> int:
    """Frames for a duration: int(duration * frame_rate) as the reference, tolerant of float32 inputs
    (0.9 s arrives as 0.89999998 and must still give 45 frames at 50 Hz)."""
    return max(1, int(seconds * frame_rate + 1e-3))
