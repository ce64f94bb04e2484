"""The page's one adapter to the server: everything goes through the project's client library (`client`).

`Backend(url).status()` says whether the server is ready, which generation models it has loaded and
what its manifest says; `Backend(url).start(model, prompt, params)` runs one generation on a worker
thread and hands its events to the page (`Job.next(timeout)`), so the page can keep its elapsed time
and ETA ticking between events. Every failure is a `BackendError` with a message fit to show.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import client as mgclient
from client import MusicGenClient, MusicGenError
from musicgen_runtime.validation import DEFAULT_MAX_DURATION, DEFAULT_WINDOW_SECONDS, GenerationParams

from . import logic
from .strings import t, translate_detail

DEFAULT_MODEL = mgclient.api.STREAM_MODEL
STATUS_TIMEOUT = 5.0  # seconds for the small status calls


class BackendError(Exception):
    """A failure to show on the page. kind: unavailable | not_ready | invalid | timeout | failed."""

    KINDS = {
        mgclient.ServerUnavailable: "unavailable",
        mgclient.ModelNotReady: "not_ready",
        mgclient.InvalidParameter: "invalid",
        mgclient.RequestTimeout: "timeout",
        mgclient.GenerationError: "failed",
    }

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message

    @classmethod
    def from_client(cls, exc: MusicGenError) -> "BackendError":
        kind = next((k for t, k in cls.KINDS.items() if isinstance(exc, t)), "failed")
        return cls(kind, exc.message)

    def user_message(self, lang: str = "en") -> str:
        """The message with a lead, in the page's language, that says what kind of failure it is (and
        no repeated prefix). The detail is the server's or the client library's own words."""
        msg = re.sub(r"^(invalid parameter|generation failed):\s*", "", self.message.strip(), flags=re.I)
        key = {
            "unavailable": "err_unavailable",
            "not_ready": "err_not_ready",
            "invalid": "err_invalid",
            "timeout": "err_timeout",
        }.get(self.kind, "err_failed")
        msg = translate_detail(msg, lang)
        if self.kind == "not_ready" and not msg.endswith((".", "!", "?", "。", "？")):
            msg += "。" if lang == "zh" else "."
        return t(key, lang, detail=msg)


@dataclass
class ServerStatus:
    url: str
    ready: bool
    error: str | None = None
    models: list[str] = field(default_factory=list)  # user-facing generation models, streaming first
    manifest: dict | None = None
    max_duration: float = DEFAULT_MAX_DURATION
    window_seconds: float = DEFAULT_WINDOW_SECONDS  # an audio prompt must be shorter
    checked_at: float = field(default_factory=time.time)

    @property
    def frame_rate(self) -> float | None:
        dims = (self.manifest or {}).get("dims") or {}
        return float(dims["frame_rate"]) if dims.get("frame_rate") else None

    @property
    def sample_rate(self) -> int | None:
        dims = (self.manifest or {}).get("dims") or {}
        return int(dims["sample_rate"]) if dims.get("sample_rate") else None


@dataclass
class Event:
    """progress / audio_chunk / final, as the client reports them (final carries the whole clip)."""

    kind: str
    frames_done: int
    frames_total: int
    chunk: np.ndarray | None = None
    chunk_start: int | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    seed_used: int | None = None
    prompt_frames: int = 0  # continuation: codec frames of the audio prompt at the start of the clip


class Job:
    """One generation running on a worker thread; the page polls `next()`."""

    def __init__(self, target, streaming: bool):
        self.streaming = streaming
        self._q: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(target,), name="musicgen-ui-job", daemon=True)
        self._thread.start()

    def _run(self, target) -> None:
        try:
            target(self._q.put, self._cancel)
        except MusicGenError as exc:
            self._q.put(BackendError.from_client(exc))
        except BaseException as exc:  # never lose a failure on the worker thread
            self._q.put(BackendError("failed", f"{type(exc).__name__}: {exc}"))

    def next(self, timeout: float = 0.25) -> Event | None:
        """The next event, or None when none came within `timeout`; raises BackendError on failure."""
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BackendError):
            raise item
        return item

    def cancel(self) -> None:
        """Stop a stream at its next event (the client then cancels the request on the server)."""
        self._cancel.set()


class Backend:
    def __init__(self, url: str, *, timeout: float = 900.0, status_timeout: float = STATUS_TIMEOUT):
        self.url = url
        self.timeout = timeout
        self.status_timeout = status_timeout

    def _client(self, **kw) -> MusicGenClient:
        try:
            return MusicGenClient(self.url, timeout=self.timeout, connect_timeout=self.status_timeout, **kw)
        except MusicGenError as exc:
            raise BackendError.from_client(exc) from None

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> ServerStatus:
        """Never raises: a server that is down or half-up gives ready=False and the reason."""
        try:
            c = self._client()
        except BackendError as exc:
            return ServerStatus(url=self.url, ready=False, error=exc.message)
        try:
            rep = c.health(generate=False)
            models = logic.generation_models([{"name": n, "state": s} for n, s in rep.models.items()])
            st = ServerStatus(url=c.endpoint, ready=bool(rep.ok), error=rep.error, models=models, manifest=rep.manifest)
            if rep.live and not models and st.error is None:
                st.ready, st.error = False, "the server has no generation model loaded"
            if st.ready:
                st.max_duration, st.window_seconds = float(c.max_duration), float(c.window_seconds)
            return st
        except MusicGenError as exc:  # health() reports rather than raises; belt and braces
            return ServerStatus(url=self.url, ready=False, error=exc.message)
        finally:
            c.close()

    # -- generation ---------------------------------------------------------------------------------
    def start(
        self,
        model: str,
        prompt: str,
        params: GenerationParams,
        *,
        melody=None,
        audio_prompt=None,
        max_duration: float | None = None,
    ) -> Job:
        """Start one generation with `model`: streamed (live progress) for a `*_stream` model. `melody`,
        `audio_prompt` (continue it): (wave [channels, samples], sample_rate) or None."""
        streaming = logic.is_streaming(model)
        kw = {"stream_model": model} if streaming else {"model": model}
        c = self._client(max_duration=max_duration, **kw)
        args = dict(
            top_k=params.top_k,
            top_p=params.top_p,
            temperature=params.temperature,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
            melody=melody,
            audio_prompt=audio_prompt,
        )

        def final_event(res, done, total) -> Event:
            return Event(
                "final",
                done,
                total,
                audio=res.audio,
                sample_rate=res.sample_rate,
                seed_used=res.seed_used,
                prompt_frames=res.prompt_frames,
            )

        def run_stream(put, cancel):
            try:
                events = c.stream(prompt, params.duration, **args)
                try:
                    for ev in events:
                        if ev.kind == "final":
                            put(final_event(ev.result, ev.frames_done, ev.frames_total))
                            return
                        put(Event(ev.kind, ev.frames_done, ev.frames_total, chunk=ev.audio, chunk_start=ev.chunk_start))
                        if cancel.is_set():
                            return
                finally:
                    events.close()  # leaving early cancels the request on the server
            finally:
                c.close()

        def run_unary(put, cancel):
            try:
                res = c.generate(prompt, params.duration, **args)
                frames = res.codes.shape[-1] if res.codes is not None else 0
                put(final_event(res, frames, frames))
            finally:
                c.close()

        return Job(run_stream if streaming else run_unary, streaming)
