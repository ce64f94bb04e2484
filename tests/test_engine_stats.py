"""The Scheduler's stats behind the engine's metrics (musicgen_runtime/engine_metrics.py), in
process on the tiny LM: queue depth, active KV rows and time-to-first-audio observations.
(The metrics themselves, through Triton's API, are checked on the real server in test_monitoring.)"""

from __future__ import annotations

import threading

import numpy as np

from musicgen_runtime.lm import GenerationRequest
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.text_lm import TextLanguageModel
from musicgen_runtime.validation import GenerationParams

FRAMES = 10


def test_queue_depth_active_rows_and_time_to_first_audio(tiny_repo):
    lm = TextLanguageModel(tiny_repo / "lm_engine" / "1")
    reports: list[dict] = []
    idle = threading.Event()

    def on_report(stats):
        reports.append(stats)
        if stats["ok"] == 3 and stats["in_flight"] == 0:
            idle.set()

    sched = Scheduler(lm, max_active=1, on_report=on_report, report_every=0.0)
    others_queued = threading.Event()
    first_progress = []

    def hold_first(seq):  # the first job waits (engine thread) until the others are in the queue
        if not first_progress:
            first_progress.append(seq.frames_ready)
            others_queued.wait(30)

    try:
        for i in range(3):
            rng = np.random.default_rng(i)
            h, m = rng.standard_normal((6, lm.dims.hidden_size)).astype(np.float32), np.ones(6, np.int64)
            seq = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=i), FRAMES))
            sched.submit(
                Job(
                    seq,
                    on_done=lambda s: None,
                    on_error=lambda s, e: None,
                    on_progress=hold_first if i == 0 else None,
                    progress_every=1,
                )
            )
        others_queued.set()
        assert idle.wait(120), reports[-1:]
    finally:
        sched.close()
    assert max(r["queue_depth"] for r in reports) == 2  # max_active 1: two wait behind the first
    assert max(r["active_rows"] for r in reports) == 2  # one request, two rows (guidance)
    assert max(r["in_flight"] for r in reports) == 3
    ttfa = [t for r in reports for t in r["time_to_first_audio"]]
    assert len(ttfa) == 3 and all(t > 0 for t in ttfa)  # one observation a request, reported once
    last = reports[-1]
    assert (last["queue_depth"], last["active_rows"], last["frames"], last["error"]) == (0, 0, 3 * FRAMES, 0)
    assert first_progress == [1]  # the first audio frame is what the observation marks
