"""Progress and ETA of one generation, shared by the web page and the command line.

Frames come from the stream's progress events, times from the caller's clock (so it is tested
without sleeping). numpy-free: the light client install imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Progress:
    """Frames done / total and the measured speed of one generation.

    The rate is measured from the first progress event on (the start-up before it — text encoding,
    queueing — is not generation speed). Before a rate is known, `prior_rate` (frames per second of
    an earlier generation) gives a first estimate.
    """

    started: float
    frames_total: int = 0
    frames_done: int = 0
    prior_rate: float | None = None
    audio_seconds: float = 0.0
    _first: tuple[float, int] | None = None
    _last_time: float | None = None

    def update(self, now: float, done: int, total: int) -> None:
        done, total = int(done), int(total)
        if total > 0:
            self.frames_total = total
        if self._first is None:
            self._first = (now, done)
        if done >= self.frames_done:
            self.frames_done = done
            self._last_time = now

    @property
    def fraction(self) -> float:
        if self.frames_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.frames_done / self.frames_total))

    def rate(self) -> float | None:
        """Frames per second measured so far (None until two progress points)."""
        if self._first is None or self._last_time is None:
            return None
        t0, f0 = self._first
        dt, df = self._last_time - t0, self.frames_done - f0
        if dt <= 0 or df <= 0:
            return None
        return df / dt

    def eta(self, now: float) -> float | None:
        """Seconds left, or None when nothing allows an estimate yet."""
        if self.frames_total > 0 and self.frames_done >= self.frames_total:
            return 0.0
        rate = self.rate() or self.prior_rate
        if not rate or self.frames_total <= 0:
            return None
        remaining = (self.frames_total - self.frames_done) / rate
        since = now - (self._last_time if self._last_time is not None else self.started)
        return max(0.0, remaining - max(0.0, since))


def format_clock(seconds: float | None) -> str:
    """0:07, 1:05, 1:02:03; '–' for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = round(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
