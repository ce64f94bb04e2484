"""Continuous batching: one thread runs the LM's batched step; requests join and leave at any step.

Used by the `lm_engine` Triton model and by in-process benchmarks. Callbacks run on the engine
thread: `on_progress(seq)` every `progress_every` new frames, then exactly one of `on_done(seq)`
or `on_error(seq, exc)`.

A job's `seq` is a `lm.Generation`, or a `long_form.LongGeneration` (a clip longer than one window): when
one of its windows finishes, the next one joins the batch (a prefill on fresh rows) and the job goes on;
progress and the final codes count the whole clip.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .errors import Cancelled
from .lm import Generation, LanguageModel
from .long_form import LongGeneration, current_window, reseat

log = logging.getLogger(__name__)
CANCEL_CHECK_EVERY = 10  # steps
STEP_TIMES_ENV = "MUSICGEN_STEP_TIMES"  # a file path: each batched step's rows and ms are appended (bench/)


@dataclass(eq=False)
class Job:
    seq: Generation | LongGeneration
    on_done: Callable[[Generation], None]
    on_error: Callable[[Generation, BaseException], None]
    on_progress: Callable[[Generation], None] | None = None
    progress_every: int = 0
    is_cancelled: Callable[[], bool] | None = None
    key: str | None = None  # caller's id, for cancel(key)
    _last_reported: int = 0
    _submitted: float = 0.0  # monotonic
    _first_audio: bool = False


class Scheduler:
    """`on_report(stats)` runs on the engine thread at most every `report_every` seconds: Triton's
    python-backend metric calls crash the server when made from two threads at once, so every
    metric update happens here, on one thread. It is also the engine's heartbeat: called on every turn
    of the loop (idle turns last at most 0.2 s), it stops when a step hangs or the thread died."""

    def __init__(self, lm: LanguageModel, max_active: int = 16, on_report=None, report_every: float = 0.2):
        self.lm = lm
        self.on_report = on_report
        self.report_every = report_every
        # in_flight, queue_depth, active_rows: now; ok/error/cancelled/frames: since start;
        # time_to_first_audio: seconds (submit -> first frame ready) observed since the last report
        self.stats = {
            "in_flight": 0,
            "queue_depth": 0,
            "active_rows": 0,
            "ok": 0,
            "error": 0,
            "cancelled": 0,
            "frames": 0,
            "time_to_first_audio": [],
        }
        self._last_report = time.monotonic()  # the first report after initialize() returned: not during it
        self.max_active = max_active  # requests beyond this wait in the queue
        self._queue: "queue.Queue[Job]" = queue.Queue()
        self._jobs: dict[int, Job] = {}
        self._keys: dict[str, Job] = {}
        self._keys_lock = threading.Lock()
        self._stop = threading.Event()
        self._step_times = self._open_step_times(os.environ.get(STEP_TIMES_ENV))
        self._thread = threading.Thread(target=self._run, name="lm-engine", daemon=True)
        self._thread.start()

    @staticmethod
    def _open_step_times(path: str | None):
        if not path:
            return None
        try:
            return open(path, "a", buffering=1)  # closed in close()
        except OSError as exc:  # a measuring aid: never a reason for the engine not to start
            log.warning("%s=%s: cannot write step times: %s", STEP_TIMES_ENV, path, exc)
            return None

    def submit(self, job: Job) -> None:
        job._submitted = time.monotonic()
        job.seq.on_step = lambda seq, job=job: self._on_step(job)
        if job.key:
            with self._keys_lock:
                self._keys[job.key] = job
        self._queue.put(job)

    def cancel(self, key: str) -> bool:
        """Cancel the queued or running job submitted with `key`; it ends at the next step."""
        with self._keys_lock:
            job = self._keys.get(key)
        if job is None:
            return False
        job.seq.cancelled = True
        return True

    @property
    def active(self) -> int:
        return len(self._jobs)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._step_times is not None:
            self._step_times.close()

    def _on_step(self, job: Job) -> None:
        if not job._first_audio and job.seq.frames_ready > 0:
            job._first_audio = True
            if self.on_report is not None:  # drained by _report; nobody drains it otherwise
                self.stats["time_to_first_audio"].append(time.monotonic() - job._submitted)
        # asking Triton costs a round trip to the server process: every few steps is enough
        if job.is_cancelled is not None and job.seq.t % CANCEL_CHECK_EVERY == 0 and job.is_cancelled():
            job.seq.cancelled = True
            return
        if job.on_progress and job.progress_every > 0:
            ready = job.seq.frames_ready
            if ready - job._last_reported >= job.progress_every and ready < job.seq.frames:
                job._last_reported = ready
                job.on_progress(job.seq)

    def _ask_prefilling(self) -> None:
        """Whether the clients of generations still prefilling left: those sample nothing, so `_on_step`
        does not run for them, and a long prompt's prefill (a later window's: seconds) would run on for
        nobody. Asked between their chunks, one chunk a step."""
        for job in self._jobs.values():
            if job.is_cancelled is not None and current_window(job.seq).prefill_left and job.is_cancelled():
                job.seq.cancelled = True

    def _admit(self, block: bool) -> None:
        while len(self._jobs) < self.max_active:
            try:
                job = self._queue.get(block=block and not self._jobs, timeout=0.2)
            except queue.Empty:
                return
            block = False
            if job.seq.cancelled:  # cancelled while queued
                self._finish(job, job.seq)
                continue
            try:
                self.lm.add(current_window(job.seq))
            except Exception as exc:  # this request cannot join (e.g. no room): it alone fails
                job.seq.error = exc
                self._finish(job, job.seq)
                continue
            self._jobs[current_window(job.seq).id] = job

    def _report(self) -> None:
        now = time.monotonic()
        if self.on_report is None or now - self._last_report < self.report_every:
            return
        self._last_report = now
        queued = self._queue.qsize()
        self.stats.update(
            in_flight=queued + len(self._jobs),
            queue_depth=queued,
            active_rows=sum(job.seq.rows for job in self._jobs.values()),
        )
        report, self.stats["time_to_first_audio"] = dict(self.stats), []
        self._safe(self.on_report, report)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._report()
            try:
                self._admit(block=True)
                if not self._jobs:
                    continue
                rows, t = self.lm.rows_used, time.perf_counter()
                finished = self.lm.step()
                if self._step_times is not None:
                    self._step_times.write(f"{rows} {(time.perf_counter() - t) * 1000.0:.3f}\n")
                for job in reseat(self.lm, finished, self._jobs, lambda job: job.seq):
                    self._finish(job, job.seq)
                self._ask_prefilling()
            except Exception as exc:  # never let the engine thread die: fail what is in flight, go on
                log.exception("engine step failed")
                for job in list(self._jobs.values()):
                    self.stats["error"] += 1
                    self._safe(job.on_error, job.seq, exc)
                self._jobs.clear()
                self.lm.reset()

    def _finish(self, job: Job, seq) -> None:
        if job.key:
            with self._keys_lock:
                self._keys.pop(job.key, None)
        if seq.error is not None:
            self.stats["error"] += 1
            self._safe(job.on_error, seq, seq.error)
        elif seq.cancelled:
            self.stats["cancelled"] += 1
            self._safe(job.on_error, seq, Cancelled("request cancelled"))
        else:
            self.stats["ok"] += 1
            self.stats["frames"] += seq.frames
            self._safe(job.on_done, seq)

    @staticmethod
    def _safe(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("response callback failed")
