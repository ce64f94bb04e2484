"""The LM loop's continuous batching, in process: requests joining and leaving at any step."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from musicgen_runtime.lm import GenerationRequest
from musicgen_runtime.text_lm import TextLanguageModel
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.validation import GenerationParams


def _states(lm, seed, t=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t, lm.dims.hidden_size)).astype(np.float32), np.ones(t, np.int64)


def _solo(lm, seed, params, frames):
    h, m = _states(lm, seed)
    return lm.generate(GenerationRequest(h, m, params, frames))


@pytest.mark.parametrize("movable", [True, False], ids=["dense-cpu", "gaps-as-on-gpu"])
def test_requests_joining_and_leaving_mid_run_match_solo_runs(tiny_repo, movable):
    """On CPU a leaving sequence's rows are filled by moving the last one; where rows cannot move
    (GPU buffers) the gap runs as a padding row until a joining sequence takes it."""
    lm = TextLanguageModel(tiny_repo / "lm_engine" / "1")
    lm.cache.can_move = movable
    reqs = [
        (0, GenerationParams(duration=1, seed=1), 30),
        (1, GenerationParams(duration=1, seed=2, top_k=5), 12),
        (2, GenerationParams(duration=1, seed=3, guidance_scale=1.0), 25),
        (3, GenerationParams(duration=1, seed=4, temperature=0.7, top_p=0.9), 20),
    ]
    join_at = {0: 0, 1: 3, 2: 7, 3: 16}  # step at which each request joins
    seqs, step, rows_seen = {}, 0, []
    while step == 0 or any(not s.done for s in seqs.values()):
        for i, p, frames in reqs:
            if join_at[i] == step:
                h, m = _states(lm, i)
                seqs[i] = lm.prepare(GenerationRequest(h, m, p, frames))
                lm.add(seqs[i])
        rows_seen.append((lm.rows_used, sum(s.rows for s in lm.active)))
        lm.step()
        step += 1
    if movable:
        assert all(used == live for used, live in rows_seen)  # never a gap
    else:
        assert any(used > live for used, live in rows_seen)  # gaps ran, and results still match
    assert not lm.active and lm.rows_used == 0  # everything left
    for i, p, frames in reqs:
        assert np.array_equal(seqs[i].codes(), _solo(lm, i, p, frames)), f"request {i} differs when batched"


def test_scheduler_serves_concurrent_jobs_and_isolates_a_failing_callback(tiny_repo):
    lm = TextLanguageModel(tiny_repo / "lm_engine" / "1")
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
            seq = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=seed), 15))
            sched.submit(
                Job(
                    seq,
                    on_done=finish(name),
                    on_error=fail(name),
                    on_progress=broken_progress if name == "bad" else None,
                    progress_every=1,
                )
            )
        assert events.wait(60)
    finally:
        sched.close()
    assert set(done) == {"a", "b", "c"} and isinstance(errors["bad"], ConnectionError)
    for name, seed in (("a", 1), ("c", 3)):
        assert np.array_equal(done[name], _solo(lm, seed, GenerationParams(duration=1, seed=seed), 15))


def test_joining_reuses_the_preallocated_cache_and_long_requests_are_refused(tiny_repo):
    """A join takes free rows of the one preallocated cache: no buffer is reallocated or copied, so
    requests already generating are not stalled. A request longer than the cache holds is refused."""
    lm = TextLanguageModel(tiny_repo / "lm_engine" / "1", max_rows=4, max_steps=40)
    ptrs = [v.data_ptr() for v in lm.cache.values]
    h, m = _states(lm, 0)
    a = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=1), 20))
    lm.add(a)
    for _ in range(5):
        lm.step()
    before = [buf[:2, :, : a.t].copy() for buf in lm.cache.host]
    b = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=2), 20))
    lm.add(b)
    assert lm.rows.start[b.id] == 2 and lm.rows_used == 4
    assert [v.data_ptr() for v in lm.cache.values] == ptrs
    assert all(np.array_equal(buf[:2, :, : a.t], old) for buf, old in zip(lm.cache.host, before))
    with pytest.raises(RuntimeError, match="batch is full"):
        lm.add(lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=3), 20)))
    with pytest.raises(ValueError, match="positions"):
        lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=3), 45))


def test_only_the_decode_steps_spin_wait(tiny_repo, melody_repo):
    """The graphs run once per request must not spin on the cores the decode steps need."""
    from musicgen_runtime.codec import AudioDecoder
    from musicgen_runtime.melody_lm import MelodyLanguageModel
    from musicgen_runtime.text import TextEncoder

    key = "session.intra_op.allow_spinning"
    lm = TextLanguageModel(tiny_repo / "lm_engine" / "1")
    codec = AudioDecoder.from_directory(tiny_repo / "audio_decoder" / "1")
    text = TextEncoder(tiny_repo / "text_encoder" / "1" / "text_encoder.onnx")
    melody = MelodyLanguageModel(melody_repo / "lm_engine" / "1")

    def entry(sess):
        try:
            return sess.get_session_options().get_session_config_entry(key)
        except Exception:  # unset: ORT's default, spinning on
            return None

    assert [entry(s) for s in (lm.cross_sess, codec.sess, text.sess, melody.condition_graph.sess)] == ["0"] * 4
    assert [entry(s) for s in (lm.decoder.sess, melody.decoder.sess)] == [None, None]


def test_a_step_binding_is_kept_while_the_rows_stay_and_logits_are_the_steps_own(tiny_repo):
    """Steps reuse one IOBinding while the batch's rows are unchanged (rebinding every cache buffer cost
    about 1.2 ms a step) and bind anew when a sequence joins or leaves; the logits a step returns are its
    own (the reused binding's next run writes into the same output buffer)."""
    lm = TextLanguageModel(tiny_repo / "lm_engine" / "1", max_rows=4, max_steps=40)
    seen, logits = [], []
    run_bound = lm.decoder.run_bound

    def spy(sess, bound, *inputs):
        seen.append(bound)
        out = run_bound(sess, bound, *inputs)
        logits.append((out, out.copy()))
        return out

    lm.decoder.run_bound = spy
    h, m = _states(lm, 0)
    a = lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=1), 8))
    lm.add(a)
    for _ in range(3):
        lm.step()
    assert seen[0] is seen[1] is seen[2]
    lm.add(lm.prepare(GenerationRequest(h, m, GenerationParams(duration=1, seed=2), 4)))  # a join: 4 rows now
    lm.step()
    lm.step()
    assert seen[3] is not seen[2] and seen[4] is seen[3]
    while lm.active:  # the short one leaves first: back to 2 rows
        lm.step()
    assert seen[-1] is not seen[4]
    assert all(np.array_equal(out, copy) for out, copy in logits)
    assert np.array_equal(a.codes(), _solo(lm, 0, GenerationParams(duration=1, seed=1), 8))
