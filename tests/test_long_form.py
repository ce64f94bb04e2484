"""Long form (musicgen_runtime/long_form.py): the window plan, and clips of several windows in the LM loop
equal to the windows run one by one by hand (tiny-random, in process)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from musicgen_runtime import names, text
from musicgen_runtime.long_form import LongGeneration, Window, WindowConfig, prepare, run_together, window_plan
from musicgen_runtime.lm import GenerationRequest
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.validation import GenerationParams
from musicgen_runtime.variants import open_language_model


def test_plan_of_50_seconds_as_audiocraft():
    # 50 Hz, window 30 s, stride 18 s
    assert window_plan(2500, 1500, 900) == [Window(0, 0, 1500), Window(900, 600, 1500), Window(1800, 600, 700)]
    # new frames: [0, 1500), [1500, 2400), [2400, 2500)


def test_plan_edges():
    assert window_plan(1500, 1500, 900) == [Window(0, 0, 1500)]  # one window
    assert window_plan(1501, 1500, 900) == [Window(0, 0, 1500), Window(900, 600, 601)]
    # window 1 s, stride 0.6 s, 2.5 s
    assert window_plan(125, 50, 30) == [Window(0, 0, 50), Window(30, 20, 50), Window(60, 20, 50), Window(90, 20, 35)]
    # an audio prompt starts the first window; the windows then go on as without one
    assert window_plan(125, 50, 30, prompt=10)[0] == Window(0, 10, 50)
    for total, window, stride, prompt in [
        (6000, 1500, 900, 0),
        (6000, 1500, 900, 1400),
        (77, 10, 1, 3),
        (99, 20, 19, 0),
    ]:
        plan = window_plan(total, window, stride, prompt)
        assert plan[-1].end == total and all(w.frames <= window for w in plan)
        assert all(b.offset == a.offset + stride and b.prompt == a.frames - stride for a, b in zip(plan, plan[1:]))
    with pytest.raises(ValueError, match="stride"):
        window_plan(100, 50, 50)
    with pytest.raises(ValueError, match="prompt"):
        window_plan(100, 50, 30, prompt=50)


@pytest.fixture(scope="module")
def parts(tiny_repo):
    lm = open_language_model(tiny_repo / "lm_engine" / "1", max_rows=8, max_steps=80)
    enc = text.TextEncoder(tiny_repo / "text_encoder" / "1" / names.TEXT_ENCODER_FILE)
    tok = text.PromptTokenizer(tiny_repo / "tokenizer" / "1" / names.TOKENIZER_FILE, lm.dims.max_text_tokens)

    def request(prompt, frames, params, prompt_codes=None):
        ids, mask = tok.encode([prompt])
        return GenerationRequest(enc(ids, mask)[0], mask[0], params, frames, prompt_codes=prompt_codes)

    return lm, request


def _by_hand(lm, request, window, stride):
    """The windows one after another, each its own `generate` prompted with the previous window's tail."""
    plan = window_plan(
        request.frames, window, stride, 0 if request.prompt_codes is None else request.prompt_codes.shape[1]
    )
    clip, rng = None, None
    for w in plan:
        prompt = request.prompt_codes if clip is None else clip[:, w.offset : w.offset + w.prompt]
        gen = lm.prepare(
            GenerationRequest(request.text_states, request.text_mask, request.params, w.frames, prompt_codes=prompt)
        )
        if rng is not None:
            gen.rng = rng
        codes = lm.finish(gen)
        rng = gen.rng
        clip = codes if clip is None else np.concatenate([clip, codes[:, clip.shape[1] - w.offset :]], axis=1)
    return clip


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_long_clip_equals_windows_by_hand_sampled_and_batched(parts, guidance):
    lm, request = parts
    params = GenerationParams(duration=2.5, top_k=50, seed=11, guidance_scale=guidance)
    long_req = request("90s rock song with loud guitars", 125, params)
    prompt = np.random.default_rng(0).integers(0, lm.dims.vocab_size, (lm.dims.num_codebooks, 7))
    cont_req = request("lofi beat", 90, GenerationParams(duration=1.66, top_k=50, seed=3), prompt_codes=prompt)
    short_req = request("a calm piano", 40, GenerationParams(duration=0.8, top_k=50, seed=5))

    seqs = [prepare(lm, r, WindowConfig(50, 30, lm.dims.frame_rate)) for r in (long_req, cont_req, short_req)]
    assert isinstance(seqs[0], LongGeneration) and seqs[0].windows == 4 and not isinstance(seqs[2], LongGeneration)
    run_together(lm, seqs)  # every window shares steps with the others
    assert all(s.error is None and s.done for s in seqs)
    assert seqs[0].codes().shape == (lm.dims.num_codebooks, 125)
    np.testing.assert_array_equal(seqs[0].codes(), _by_hand(lm, long_req, 50, 30))
    np.testing.assert_array_equal(seqs[1].codes(), _by_hand(lm, cont_req, 50, 30))
    np.testing.assert_array_equal(seqs[1].codes()[:, :7], prompt)
    assert seqs[1].prompt_frames == 7 and seqs[1].frames == 90
    np.testing.assert_array_equal(seqs[2].codes(), lm.generate(short_req))


def test_scheduler_runs_windows_and_reports_the_whole_clip(parts):
    lm, request = parts
    params = GenerationParams(duration=2.5, top_k=1, seed=0)
    seq = prepare(lm, request("techno", 125, params), WindowConfig(50, 30, lm.dims.frame_rate))
    other = lm.prepare(request("jazz", 45, params))
    progress, done, errors = [], {}, []
    finished = threading.Event()
    sched = Scheduler(lm, max_active=4)
    try:

        def on_done(s):
            done[id(s)] = s.codes()
            if len(done) == 2:
                finished.set()

        def on_progress(s):
            progress.append((s.frames_ready, s.frames, s.codes(s.frames_ready)))

        sched.submit(Job(seq, on_done, lambda s, e: errors.append(e), on_progress, progress_every=5))
        sched.submit(Job(other, on_done, lambda s, e: errors.append(e)))
        assert finished.wait(120), errors
    finally:
        sched.close()
    assert not errors
    clip = done[id(seq)]
    assert clip.shape[1] == 125
    np.testing.assert_array_equal(done[id(other)], lm.generate(request("jazz", 45, params)))
    readies = [p[0] for p in progress]
    assert readies == sorted(readies) and readies[-1] > 100 and {p[1] for p in progress} == {125}
    for ready, _, codes in progress:  # progress codes are the clip's, across window boundaries
        np.testing.assert_array_equal(codes, clip[:, :ready])
