"""Which frames to decode for each streamed audio chunk.

The EnCodec decoder is not causal (convolutions look both ways, the LSTM carries state), so a
chunk [start, end) is decoded from a window with `left` frames of context before it and up to
`right` frames after it; the chunk is sent once those right-context frames exist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int  # frames per chunk
    left: int  # context frames decoded before a chunk
    right: int  # context frames decoded after a chunk (when available)
    first: int = 0  # frames of the first chunk (shorter: the first sound arrives sooner); 0 = chunk

    def ready_chunks(self, start: int, frames_ready: int, frames_total: int):
        """Chunks [a, b) that can be emitted now, starting at frame `start`, with their decode windows."""
        out = []
        a = start
        while a < frames_total:
            size = self.first if (a == 0 and self.first > 0) else self.chunk
            b = min(a + size, frames_total)
            need = min(b + self.right, frames_total)
            if frames_ready < need:
                break
            out.append((a, b, max(0, a - self.left), need))
            a = b
        return out
