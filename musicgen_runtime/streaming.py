"""Which frames the codec needs for each streamed audio chunk, and where the chunks end.

The EnCodec decoder is not causal: its first convolution looks `reach.codes` frames each side, the
LSTM after it carries state forward, and the upsampling stack after that looks `reach.hidden` frames
each side. codec.AudioDecoder decodes a clip window by window, carrying the LSTM state and the last
hidden frames, so the chunks' audio is the clip decoded whole; a chunk [a, b) can be decoded once the
codes up to `reach.needed(b, total)` exist.

Chunks start short (the first sound arrives sooner) and double up to `max_chunk`: each call has a
fixed cost, and a few frames of context are decoded again per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_FRAMES = 4  # the codec's reflect padding needs windows of at least this many frames


@dataclass(frozen=True)
class Reach:
    """The codec's context in frames, measured at export (manifest "codec_reach")."""

    codes: int  # codes either side of a hidden frame (the first convolution)
    hidden: int  # hidden frames either side of an audio frame (the upsampling stack)

    @classmethod
    def from_manifest(cls, manifest: dict) -> Reach:
        r = manifest.get("codec_reach")
        if not isinstance(r, dict):
            raise ValueError("the manifest has no codec_reach: re-export (`make export`)")
        return cls(codes=int(r["codes"]), hidden=int(r["hidden"]))

    @property
    def left(self) -> int:
        """Hidden frames decoded again before a chunk: its reach, and enough for a window of MIN_FRAMES."""
        return max(self.hidden, MIN_FRAMES - 1)

    def hidden_end(self, b: int, total: int) -> int:
        """Where the hidden frames that decode a chunk ending at `b` end: `reach.hidden` past it, and for
        the first window at least MIN_FRAMES (later windows start `left` frames before their chunk)."""
        return min(total, max(b + self.hidden, MIN_FRAMES))

    def needed(self, b: int, total: int) -> int:
        """Codes a chunk ending at frame `b` of a `total`-frame clip needs: frames [0, needed)."""
        return min(total, self.hidden_end(b, total) + self.codes)


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int  # frames of the second chunk (and of every chunk when max_chunk <= chunk)
    reach: Reach
    first: int = 0  # frames of the first chunk (shorter: the first sound arrives sooner); 0 = chunk
    max_chunk: int = 0  # chunks after the second double in size up to this; 0 = fixed size

    def boundaries(self, frames_total: int):
        """Chunk ends, in order, for a clip of `frames_total` frames. The decoder needs new hidden frames
        for every chunk: the first is at least MIN_FRAMES long, and a chunk that would end within
        `reach.hidden` frames of the clip's end takes those frames too."""
        end, size, first = 0, max(self.first or self.chunk, MIN_FRAMES), True
        while end < frames_total:
            end = min(end + size, frames_total)
            if end + self.reach.hidden >= frames_total:
                end = frames_total
            yield end
            size = self.chunk if first else min(2 * size, max(self.max_chunk, self.chunk))
            first = False

    def ready_chunks(self, start: int, frames_ready: int, frames_total: int) -> list[tuple[int, int]]:
        """Chunks [a, b) that can be decoded now, starting at frame `start` (a chunk boundary)."""
        out, a = [], 0
        for b in self.boundaries(frames_total):
            if b <= start:
                a = b
                continue
            if frames_ready < self.reach.needed(b, frames_total):
                break
            out.append((a, b))
            a = b
        return out
