"""Clips longer than one window: audiocraft's window algorithm (`MusicGen._generate_tokens`) on the LM loop.

A clip of `total` frames (an audio prompt's included) is generated in windows of at most `window` frames,
each starting `stride` frames after the previous one. The first window starts with the audio prompt (if
any); every later window is prompted with the previous window's frames from `stride` on (its last
window - stride frames) and generates up to `min(total - offset, window)` frames in all; its new frames
extend the clip. For 50 s at 50 Hz, window 30 s, stride 18 s: [0, 1500) text only; [1500, 2400) prompted
by [900, 1500); [2400, 2500) prompted by [1800, 2400).

Each window is an ordinary `lm.Generation` (its own prefill, its own cache rows, sized for one window):
the scheduler seats the next window when one finishes (`LongGeneration.next_window`), so windows of long
requests share batched steps with every other request. A melody model's window is conditioned on the
melody at the window's time offset, looped to the window's length (audiocraft: samples from
int(time_offset * sr), `positions % wav_length`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import chroma as chroma_mod
from .lm import Generation, GenerationRequest, LanguageModel

DEFAULT_EXTEND_STRIDE = 18.0  # audiocraft's extend_stride


@dataclass(frozen=True)
class WindowConfig:
    """An engine's windows, in frames (lm_engine parameters `window_seconds` and `extend_stride`)."""

    window: int
    stride: int
    frame_rate: float

    @classmethod
    def from_seconds(cls, window_seconds: float, extend_stride: float, frame_rate: float, max_window: int):
        """`window_seconds` capped at `max_window` frames (what the position table allows); ValueError
        unless 0 < stride < window."""
        window = min(max_window, int(float(window_seconds) * frame_rate + 1e-3))
        stride = int(float(extend_stride) * frame_rate + 1e-3)
        if not 0 < stride < window:
            raise ValueError(
                f"extend_stride ({extend_stride} s, {stride} frames) must be above 0 and below the window "
                f"({window} frames, {window / frame_rate:g} s: window_seconds {window_seconds} capped by the positions)"
            )
        return cls(window, stride, frame_rate)

    @property
    def seconds(self) -> float:
        return self.window / self.frame_rate


@dataclass(frozen=True)
class Window:
    offset: int  # clip frame the window starts at
    prompt: int  # frames it starts with (an audio prompt's or the previous window's tail)
    frames: int  # frames in all, the prompt's included

    @property
    def end(self) -> int:
        return self.offset + self.frames


def window_plan(total: int, window: int, stride: int, prompt: int = 0) -> list[Window]:
    """The windows of a clip of `total` frames (an audio prompt of `prompt` frames included), as audiocraft."""
    if not 0 < stride < window:
        raise ValueError(f"stride ({stride} frames) must be in (0, window = {window} frames)")
    if not 0 <= prompt < min(total, window):
        raise ValueError(f"a {prompt}-frame prompt leaves no room for new frames in a {window}-frame window")
    out = [Window(0, prompt, min(total, window))]
    while True:
        last = out[-1]
        offset, tail = last.offset + stride, last.frames - stride
        if offset + tail >= total:
            return out
        out.append(Window(offset, tail, min(total - offset, window)))


class LoopedMelody:
    """A melody's chroma per window: the waveform at the model's rate from the window's time offset, looped
    to the window's length (audiocraft's long form), then chroma.chroma. Computed when the request arrives,
    so an unusable stretch is refused before generation starts."""

    def __init__(self, wave, sample_rate: int, config: chroma_mod.ChromaConfig):
        mono = chroma_mod.to_mono(np.asarray(wave))
        chroma_mod.check_wave(mono, sample_rate)
        self.config = config
        self.wave = chroma_mod.resample(mono, int(sample_rate), config.sample_rate)

    def window_chroma(self, time_offset: float, window_seconds: float) -> np.ndarray:
        sr = self.config.sample_rate
        start = int(time_offset * sr)
        positions = np.arange(start, start + int(window_seconds * sr))
        return chroma_mod.chroma(self.wave[positions % self.wave.shape[0]], sr, self.config)


class LongGeneration:
    """A request in several windows, seen by its callers as one generation of the whole clip: `frames`,
    `frames_ready` and `codes` count the clip, `prompt_frames` is the audio prompt's. Window generations
    are prepared one at a time (`window`: the one in the LM now) and share one random generator."""

    def __init__(
        self, lm: LanguageModel, request: GenerationRequest, windows: WindowConfig, melody: LoopedMelody | None = None
    ):
        prompt = 0 if request.prompt_codes is None else int(np.asarray(request.prompt_codes).shape[1])
        self.plan = window_plan(request.frames, windows.window, windows.stride, prompt)
        self.lm, self.request = lm, request
        self.frames, self.prompt_frames = request.frames, prompt
        rate = windows.frame_rate
        self.chromas = (
            [melody.window_chroma(w.offset / rate, windows.seconds) for w in self.plan] if melody is not None else None
        )
        self._codes = np.zeros((lm.dims.num_codebooks, request.frames), np.int64)
        self._filled = 0  # clip frames final before the current window's new ones
        self._index = 0
        self.on_step = request.on_step
        self._cancelled = False
        self.window = self._prepare(0, request.prompt_codes, None)
        self.params = self.window.params
        self._error: BaseException | None = None

    def _prepare(self, index: int, prompt_codes, rng) -> Generation:
        w = self.plan[index]
        req = replace(
            self.request,
            frames=w.frames,
            prompt_codes=prompt_codes,
            chroma=self.request.chroma if self.chromas is None else self.chromas[index],
            on_step=lambda _gen: self.on_step(self) if self.on_step is not None else None,
        )
        if index:
            req = replace(req, params=self.params)
        gen = self.lm.prepare(req)
        if rng is not None:  # the clip's random stream goes on across windows
            gen.rng = rng
        gen.cancelled = self._cancelled
        return gen

    def next_window(self) -> Generation | None:
        """After the current window finished well: its new frames join the clip; the next window's
        generation (prompted with this one's tail), or None when the clip is complete."""
        w, gen = self.plan[self._index], self.window
        self._codes[:, self._filled : w.end] = gen.codes()[:, self._filled - w.offset :]
        self._filled = w.end
        if self._index + 1 == len(self.plan):
            return None
        nxt = self.plan[self._index + 1]
        tail = self._codes[:, nxt.offset : nxt.offset + nxt.prompt]
        nxt_gen = self._prepare(self._index + 1, tail, gen.rng)
        self.window, self._index = nxt_gen, self._index + 1
        return nxt_gen

    # -- what callers read, as of a Generation ---------------------------------------------------------------
    @property
    def windows(self) -> int:
        return len(self.plan)

    @property
    def error(self) -> BaseException | None:
        return self._error or self.window.error

    @error.setter
    def error(self, exc: BaseException | None) -> None:
        self._error = exc

    @property
    def cancelled(self) -> bool:
        return self._cancelled or self.window.cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:  # from any thread: the window seated next inherits it
        self._cancelled = value
        self.window.cancelled = value

    @property
    def t(self) -> int:
        return self.window.t

    @property
    def rows(self) -> int:
        return self.window.rows

    @property
    def done(self) -> bool:
        return self.error is not None or self.cancelled or self._filled >= self.frames

    @property
    def frames_ready(self) -> int:
        w = self.plan[self._index]
        return max(self._filled, w.offset + self.window.frames_ready)

    def codes(self, upto_frames: int | None = None) -> np.ndarray:
        """[K, upto_frames] codes of the clip (only meaningful up to frames_ready)."""
        n = self.frames if upto_frames is None else upto_frames
        if n <= self._filled:
            return self._codes[:, :n].copy()
        w = self.plan[self._index]
        current = self.window.codes(n - w.offset)[:, self._filled - w.offset :]
        return np.concatenate([self._codes[:, : self._filled], current], axis=1)


def prepare(
    lm: LanguageModel, request: GenerationRequest, windows: WindowConfig, melody: LoopedMelody | None = None
) -> Generation | LongGeneration:
    """One window's Generation when the clip fits in one (conditioned on `request.chroma`, the whole melody
    as is); otherwise a LongGeneration over windows (conditioned on `melody` at each window's offset)."""
    if request.frames <= windows.window:
        return lm.prepare(request)
    return LongGeneration(lm, request, windows, melody)


def run_together(lm: LanguageModel, seqs) -> None:
    """Like LanguageModel.run_together, for Generations and LongGenerations: a finished window's successor
    joins at once (the scheduler does the same on its thread, through `reseat`)."""
    current = {}
    for s in seqs:
        gen = current_window(s)
        current[gen.id] = s
        lm.add(gen)
    while current:
        reseat(lm, lm.step(), current, lambda s: s)


def reseat(lm: LanguageModel, finished: list[Generation], current: dict, seq_of) -> list:
    """After an LM step: each finished generation's owner in `current` ({generation id: owner}; `seq_of`
    gives an owner's Generation or LongGeneration) moves to its next window, seated at once, or is over.
    Returns the owners that are over, in order."""
    over = []
    for gen in finished:
        owner = current.pop(gen.id)
        nxt = next_window(seq_of(owner), gen)
        if nxt is None:
            over.append(owner)
        else:  # a long clip's next window: fresh rows, the owner goes on
            current[nxt.id] = owner
            lm.add(nxt)
    return over


def current_window(seq) -> Generation:
    """The generation of `seq` (a Generation or a LongGeneration) that is in the LM now."""
    return seq.window if isinstance(seq, LongGeneration) else seq


def next_window(seq, gen: Generation) -> Generation | None:
    """The generation to seat after `gen` (a window of `seq`) left the LM: the next window of a
    LongGeneration that finished it well; None when `seq` is over (done, failed or cancelled). A failure
    to prepare the next window fails `seq` alone."""
    if not isinstance(seq, LongGeneration) or gen.error is not None or gen.cancelled:
        return None
    try:
        return seq.next_window()
    except Exception as exc:
        seq.error = exc
        return None
