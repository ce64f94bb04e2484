"""Chunked prefill, in process: a prompt (and a melody prefix) prefilled a few columns per engine step gives
the codes of the one-step prefill, while the other generations keep decoding; a cancel between chunks frees
the rows. The one-step prefill itself is compared with transformers by the oracle tests (test_export,
test_melody, test_long_form)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from musicgen_runtime.errors import Cancelled
from musicgen_runtime.lm import GenerationRequest
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.validation import GenerationParams
from musicgen_runtime.variants import open_language_model

ONE_STEP = 10**6  # a chunk larger than any prompt: the whole prefill in one step
GREEDY = GenerationParams(duration=1, top_k=1, guidance_scale=3.0, seed=0)


def _request(lm, seed, frames, prompt_frames, params=GREEDY):
    rng = np.random.default_rng(seed)
    h, m = rng.standard_normal((6, lm.dims.hidden_size)).astype(np.float32), np.ones(6, np.int64)
    chroma = rng.random((40, lm.chroma_config.num_chroma)).astype(np.float32) if lm.chroma_config else None
    prompt = rng.integers(0, lm.dims.vocab_size, (lm.dims.num_codebooks, prompt_frames)) if prompt_frames else None
    return GenerationRequest(h, m, params, frames, chroma=chroma, prompt_codes=prompt)


def _steps_to_first_sample(lm, gen) -> int:
    lm.add(gen)
    steps, t0 = 0, gen.t
    while gen.t == t0 and not gen.done:
        lm.step()
        steps += 1
    while not gen.done:
        lm.step()
    assert gen.error is None, gen.error
    return steps


@pytest.fixture(params=["text", "melody"])
def model_dir(request, tiny_repo, melody_repo):
    return (tiny_repo if request.param == "text" else melody_repo) / "lm_engine" / "1"


@pytest.mark.parametrize("chunk", [1, 3, 40])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_chunked_prefill_gives_the_one_step_codes(model_dir, chunk, guidance):
    """Greedy codes (fp32) after a 23-frame prompt (melody: after the prefix too), prefilled `chunk`
    columns per step, equal those of the one-step prefill; the prefill takes ceil(24 / chunk) steps."""
    params = GenerationParams(duration=1, top_k=1, guidance_scale=guidance, seed=0)
    one = open_language_model(model_dir, max_rows=4, prefill_chunk=ONE_STEP)
    lm = open_language_model(model_dir, max_rows=4, prefill_chunk=chunk)
    want = one.prepare(_request(one, 1, 40, 23, params))
    got = lm.prepare(_request(lm, 1, 40, 23, params))
    assert _steps_to_first_sample(one, want) == 1
    assert _steps_to_first_sample(lm, got) == -(-24 // chunk)
    np.testing.assert_array_equal(got.codes(), want.codes())
    assert not lm.pending and lm.rows_used == 0


def test_others_decode_a_column_per_step_while_a_prompt_prefills(model_dir):
    """A generation decoding keeps advancing one column per engine step while a 30-frame prompt prefills
    in 2-column chunks on rows after it; it finishes mid-prefill, the prefilling rows move into its
    place, and both give the codes they give alone."""
    lm = open_language_model(model_dir, max_rows=4, prefill_chunk=2)
    solo = open_language_model(model_dir, max_rows=4, prefill_chunk=ONE_STEP)
    short_req, long_req = _request(lm, 2, 5, 0), _request(lm, 3, 40, 30)
    short, long = lm.prepare(short_req), lm.prepare(long_req)
    lm.add(short)
    lm.step()  # melody: the short one's own prefix prefill
    lm.add(long)
    progress, moved = [], False
    while long.prefill_left and not long.done:
        before = short.t
        lm.step()
        if not short.done:
            progress.append(short.t - before)
        moved |= short.done and lm.rows.start.get(long.id) == 0
    assert progress and set(progress) == {1}  # the short one never waited for the whole prefill
    assert short.done and moved  # it left during the prefill; the prefilling rows took its place
    while not long.done:
        lm.step()
    for gen, req in ((short, short_req), (long, long_req)):
        assert gen.error is None, gen.error
        np.testing.assert_array_equal(gen.codes(), solo.generate(req))


def test_a_cancel_between_chunks_frees_the_rows(model_dir):
    lm = open_language_model(model_dir, max_rows=2, prefill_chunk=3)
    gen = lm.prepare(_request(lm, 4, 40, 30))
    lm.add(gen)
    lm.step()
    lm.step()
    assert gen.prefilled == 6 and lm.rows_used == 2 and gen.prefill_left
    lm.cancel(gen)
    assert lm.step() == [gen]
    assert lm.rows_used == 0 and not lm.pending
    # the freed rows serve the next request (the only one that fits) as if nothing had been there
    req = _request(lm, 5, 20, 7)
    codes = lm.generate(req)
    np.testing.assert_array_equal(codes, open_language_model(model_dir, prefill_chunk=ONE_STEP).generate(req))


def test_a_client_that_leaves_during_the_prefill_is_noticed_between_chunks(model_dir):
    """The engine asks a prefilling generation's client between its chunks (it samples nothing yet, so no
    step callback asks): a 30-frame prompt in 3-column chunks ends a few chunks after the client left."""
    lm = open_language_model(model_dir, max_rows=2, prefill_chunk=3)
    gen = lm.prepare(_request(lm, 4, 40, 30))
    asked, ended = [], threading.Event()

    def is_cancelled() -> bool:  # the client leaves once the engine has asked twice
        asked.append(gen.prefilled)
        return len(asked) >= 2

    errors = []
    sched = Scheduler(lm, max_active=1)
    try:
        sched.submit(
            Job(
                gen,
                on_done=lambda s: ended.set(),
                on_error=lambda s, e: (errors.append(e), ended.set()),
                is_cancelled=is_cancelled,
            )
        )
        assert ended.wait(60)
    finally:
        sched.close()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert asked[:2] == [3, 6] and gen.prefill_left and gen.prefilled <= 9  # never reached its first sample
    assert lm.rows_used == 0
