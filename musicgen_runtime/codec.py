"""EnCodec decoder graph: codes -> waveform, a whole clip at once or chunk by chunk alike.

The graph decodes a window of a clip (export/graphs.py AudioDecoder). A clip decoded chunk by chunk
carries the LSTM's state and the last few hidden frames from one window to the next, and each window
reaches as far as the codec looks (streaming.Reach), so the chunks together are the clip decoded
whole, whatever the chunk sizes: only the frames of context are decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import manifest, names
from .onnx_session import open_graph
from .streaming import MIN_FRAMES, Reach
from .validation import ValidationError


@dataclass(frozen=True)
class CodecState:
    """Where a clip's decode stands between chunks."""

    frames: int  # hidden frames decoded: the LSTM's state is at this frame
    emitted: int  # audio frames returned so far
    lstm: np.ndarray  # float32 [2 (h, c), layers, rows, H]; rows 1 at the start (the graph broadcasts it)
    tail: np.ndarray  # float32 [rows, H, n]: hidden frames [frames - n, frames), decoded again next time

    HEADER = 3  # frames, emitted, n: exact in float32 (below 2**24)

    def pack(self) -> np.ndarray:
        """One float32 vector (it travels through Triton as `codec_state`)."""
        head = np.array([self.frames, self.emitted, self.tail.shape[-1]], np.float32)
        return np.concatenate([head, self.lstm.ravel(), self.tail.ravel()]).astype(np.float32, copy=False)

    @classmethod
    def unpack(cls, flat: np.ndarray, layers: int, width: int) -> CodecState:
        flat = np.asarray(flat, np.float32).ravel()
        bad = ValidationError("codec_state must be the codec_state the previous chunk's decode returned")
        if flat.size < cls.HEADER or not np.all(np.isfinite(flat[: cls.HEADER])):
            raise bad
        frames, emitted, n = (int(v) for v in flat[: cls.HEADER])
        per_row = width * (2 * layers + n)
        rows, rest = divmod(flat.size - cls.HEADER, per_row) if per_row > 0 and n >= 0 else (0, 1)
        if rows < 1 or rest or not frames - n <= emitted <= frames or n > frames:  # the tail reaches the emitted
            raise bad
        body = flat[cls.HEADER :]
        lstm = body[: 2 * layers * rows * width].reshape(2, layers, rows, width)
        return cls(frames, emitted, lstm, body[lstm.size :].reshape(rows, width, n))


class AudioDecoder:
    def __init__(
        self, graph: str | Path, hop_length: int, reach: Reach, device: str = "cpu", threads: int | None = None
    ):
        self.sess = open_graph(
            graph,
            device,
            threads,
            expect_inputs=[names.AUDIO_CODES, names.FRAME_RANGE, names.LSTM_STATE, names.HIDDEN_BEFORE],
            expect_outputs=[names.AUDIO_VALUES, names.LSTM_STATE_OUT, names.CODEC_HIDDEN],
            spin=False,
        )
        state = next(i for i in self.sess.get_inputs() if i.name == names.LSTM_STATE)
        _, self.layers, _, self.width = state.shape
        self.hop = hop_length
        self.reach = reach
        # the codec's rows per clip (2 for a stereo LM over a mono EnCodec): from one short decode at load
        codebooks = next(i for i in self.sess.get_inputs() if i.name == names.AUDIO_CODES).shape[2]
        _, lstm, _ = self._run(np.zeros((1, codebooks, MIN_FRAMES), np.int64), 0, MIN_FRAMES, self.start())
        self.rows_per_clip = lstm.shape[2]

    @classmethod
    def from_directory(cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None) -> AudioDecoder:
        """The decoder staged in `model_dir` (audio_decoder/1), as its manifest describes it."""
        m = manifest.read(model_dir)
        return cls(
            Path(model_dir) / names.AUDIO_DECODER_FILE,
            manifest.dims(m).hop_length,
            Reach.from_manifest(m),
            device,
            threads,
        )

    def _run(self, window: np.ndarray, lo: int, hi: int, state: CodecState):
        """The graph on codes `window` [B, K, W], the LSTM over its frames [lo, hi) -> audio, LSTM state, hidden."""
        return self.sess.run(
            [names.AUDIO_VALUES, names.LSTM_STATE_OUT, names.CODEC_HIDDEN],
            {
                names.AUDIO_CODES: np.ascontiguousarray(window[None]),
                names.FRAME_RANGE: np.array([lo, hi], np.int64),
                names.LSTM_STATE: state.lstm,
                names.HIDDEN_BEFORE: state.tail,
            },
        )

    def start(self) -> CodecState:
        """The state before a clip's first chunk."""
        return CodecState(
            0, 0, np.zeros((2, self.layers, 1, self.width), np.float32), np.zeros((1, self.width, 0), np.float32)
        )

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """A whole clip: codes [B, K, T] -> audio [B, channels, T * hop] float32."""
        codes = np.asarray(codes, np.int64)
        t = codes.shape[-1]
        return self.decode(codes, t, t)[0]

    def decode(self, codes: np.ndarray, total: int, upto: int, state: CodecState | None = None):
        """Audio frames [state.emitted, upto) of a `total`-frame clip, from its codes so far [B, K, ready]
        (ready >= reach.needed(upto, total)); returns (audio [B, channels, frames * hop] float32, the state
        for the clip's next chunk). Each chunk must bring new hidden frames (ChunkPlan's chunks do)."""
        codes = np.asarray(codes, np.int64)
        state = state or self.start()
        a, f, ready = state.emitted, state.frames, codes.shape[-1]
        if not 0 <= a < upto <= total or ready > total:
            raise ValidationError(f"cannot decode frames [{a}, {upto}) of a {total}-frame clip from {ready} frames")
        if ready < self.reach.needed(upto, total):
            raise ValidationError(
                f"frames [{a}, {upto}) need the codes up to frame {self.reach.needed(upto, total)}; got {ready}"
            )
        if total < MIN_FRAMES:  # one window: pad by repeating the last frame, then cut the audio back
            if a:
                raise ValidationError(f"a clip of {total} frames is decoded in one chunk")
            codes = np.concatenate([codes, np.repeat(codes[..., -1:], MIN_FRAMES - total, axis=-1)], axis=-1)
            audio, done = self.decode(codes, MIN_FRAMES, MIN_FRAMES)
            return audio[..., : upto * self.hop], done
        rows = codes.shape[0] * self.rows_per_clip
        if {state.lstm.shape[2], state.tail.shape[0]} - ({1, rows} if f == 0 else {rows}):  # a start broadcasts
            raise ValidationError(f"codec_state holds {state.lstm.shape[2]} rows; these codes decode as {rows}")
        g = self.reach.hidden_end(upto, total)  # hidden frames [f, g) are new; [s, f) come from the state
        if g <= f:
            raise ValidationError(
                f"frames [{a}, {upto}) bring no new codes: end the first chunk at frame {MIN_FRAMES} or later, "
                f"and every other one at the clip's end or more than {self.reach.hidden} frames before it"
            )
        s = f - state.tail.shape[-1]
        w0, w1 = max(0, f - self.reach.codes), min(total, g + self.reach.codes)  # the codes they need
        audio, lstm, hidden = self._run(codes[..., w0:w1], f - w0, g - w0, state)
        keep = max(s, upto - self.reach.left)  # the next chunk's left context
        after = CodecState(g, upto, lstm, np.ascontiguousarray(hidden[..., keep - s :]))
        return audio[..., (a - s) * self.hop : (upto - s) * self.hop].astype(np.float32, copy=False), after
