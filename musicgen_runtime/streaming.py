"""Which frames to decode for each streamed audio chunk.

The EnCodec decoder is not causal (convolutions look both ways, the LSTM carries state), so a
chunk [start, end) is decoded from a window with `left` frames of context before it and up to
`right` frames after it; the chunk is sent once those right-context frames exist.

Chunks start short (the first sound arrives sooner) and double up to `max_chunk`: each window
decodes `left` extra frames, so longer chunks later in a clip cut the decoder's work (for a 30 s
clip with 1 s chunks and 1 s of context, 2x the audio; growing to 4 s chunks, about 1.3x).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int  # frames of the second chunk (and of every chunk when max_chunk <= chunk)
    left: int  # context frames decoded before a chunk
    right: int  # context frames decoded after a chunk (when available)
    first: int = 0  # frames of the first chunk (shorter: the first sound arrives sooner); 0 = chunk
    max_chunk: int = 0  # chunks after the second double in size up to this; 0 = fixed size

    def boundaries(self, frames_total: int):
        """Chunk ends, in order, for a clip of `frames_total` frames."""
        end, size, first = 0, self.first or self.chunk, True
        while end < frames_total:
            end = min(end + size, frames_total)
            yield end
            size = self.chunk if first else min(2 * size, max(self.max_chunk, self.chunk))
            first = False

    def ready_chunks(self, start: int, frames_ready: int, frames_total: int):
        """Chunks [a, b) that can be emitted now, starting at frame `start` (a chunk boundary),
        with their decode windows [w0, w1)."""
        out, a = [], 0
        for b in self.boundaries(frames_total):
            if b <= start:
                a = b
                continue
            need = min(b + self.right, frames_total)
            if frames_ready < need:
                break
            out.append((a, b, max(0, a - self.left), need))
            a = b
        return out
