"""The LM loop's continuous batching, in process: requests joining and leaving at any step."""

from __future__ import annotations

import threading

import numpy as np

from musicgen_runtime.lm import LanguageModel
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.validation import GenerationParams


def _states(lm, seed, t=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, lm.dims.hidden_size)).astype(np.float32), np.ones(t, np.int64)


def _solo(lm, seed, params, frames):
    h, m = _states(lm, seed)
    return lm.generate(h, m, params, frames)


def test_requests_joining_and_leaving_mid_run_match_solo_runs(tiny_repo):
    lm = LanguageModel(tiny_repo / "lm_engine" / "1")
    reqs = [(0, GenerationParams(duration=1, seed=1), 30), (1, GenerationParams(duration=1, seed=2, top_k=5), 12),
            (2, GenerationParams(duration=1, seed=3, guidance_scale=1.0), 25),
            (3, GenerationParams(duration=1, seed=4, temperature=0.7, top_p=0.9), 20)]
    join_at = {0: 0, 1: 3, 2: 7, 3: 16}  # step at which each request joins
    seqs, step = {}, 0
    while step == 0 or any(not s.done for s in seqs.values()):
        for i, p, frames in reqs:
            if join_at[i] == step:
                h, m = _states(lm, i)
                seqs[i] = lm.prepare(h, m, p, frames)
                lm.add(seqs[i])
        lm.step()
        step += 1
    assert not lm.active and lm.capacity == 0  # everything left, buffers released
    for i, p, frames in reqs:
        assert np.array_equal(seqs[i].codes(), _solo(lm, i, p, frames)), f"request {i} differs when batched"


def test_scheduler_serves_concurrent_jobs_and_isolates_a_failing_callback(tiny_repo):
    lm = LanguageModel(tiny_repo / "lm_engine" / "1")
    sched = Scheduler(lm, max_active=2)  # the third job waits in the queue
    done, errors, events = {}, {}, threading.Event()

    def finish(name):
        def cb(seq):
            done[name] = seq.codes()
            if len(done) + len(errors) == 4:
                events.set()
        return cb

    def fail(name):
        def cb(seq, exc):
            errors[name] = exc
            if len(done) + len(errors) == 4:
                events.set()
        return cb

    def broken_progress(seq):
        raise ConnectionError("client went away")

    try:
        for name, seed in (("a", 1), ("b", 2), ("c", 3), ("bad", 4)):
            h, m = _states(lm, seed)
            seq = lm.prepare(h, m, GenerationParams(duration=1, seed=seed), 15)
            sched.submit(Job(seq, on_done=finish(name), on_error=fail(name),
                             on_progress=broken_progress if name == "bad" else None, progress_every=1))
        assert events.wait(60)
    finally:
        sched.close()
    assert set(done) == {"a", "b", "c"} and isinstance(errors["bad"], ConnectionError)
    for name, seed in (("a", 1), ("c", 3)):
        assert np.array_equal(done[name], _solo(lm, seed, GenerationParams(duration=1, seed=seed), 15))
