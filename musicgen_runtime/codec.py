"""EnCodec decoder graph: codes -> waveform, whole clips or windows for streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import names
from .onnx_session import open_graph

MIN_FRAMES = 4  # the codec's reflect padding needs at least this many frames


class AudioDecoder:
    def __init__(self, graph: str | Path, hop_length: int, device: str = "cpu", threads: int | None = None):
        self.sess = open_graph(
            graph, device, threads, expect_inputs=[names.AUDIO_CODES], expect_outputs=[names.AUDIO_VALUES], spin=False
        )
        self.hop = hop_length

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """codes [B, K, T] -> audio [B, channels, T * hop] float32."""
        codes = np.asarray(codes, np.int64)
        t = codes.shape[-1]
        if t < MIN_FRAMES:  # pad by repeating the last frame, then cut the audio back
            codes = np.concatenate([codes, np.repeat(codes[..., -1:], MIN_FRAMES - t, axis=-1)], axis=-1)
        audio = self.sess.run([names.AUDIO_VALUES], {names.AUDIO_CODES: codes[None]})[0]
        return audio[..., : t * self.hop].astype(np.float32, copy=False)
