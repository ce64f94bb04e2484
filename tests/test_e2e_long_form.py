"""Long form through a real tritonserver (tiny-random; lm_engine with 1 s windows, a 0.6 s stride and 3 s at
most): clips of several windows equal audiocraft's window loop on transformers, streamed chunks tile the
clip, an audio prompt starts it, refusals are 400s, a request alongside is unaffected."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_e2e_server import concurrently, generate_http, stream
from test_error_codes import _http_infer
from tritonclient.utils import InferenceServerException

from export.signals import synth_melody
from musicgen_runtime import manifest, names
from musicgen_runtime.long_form import window_plan

from staging import copy_with_parameters
from cli_run import run_cli

PROMPT = "lofi hip hop beat with mellow piano"
HOP = 640
WINDOW, STRIDE = 50, 30  # frames: 1 s, 0.6 s at 50 Hz


@pytest.fixture(scope="module")
def long_triton(tiny_repo, tmp_path_factory):
    from server import TritonServer

    repo = copy_with_parameters(
        tiny_repo,
        tmp_path_factory.mktemp("long") / "model_repository",
        "lm_engine",
        window_seconds="1",
        extend_stride="0.6",
        max_duration="3",
    )
    with TritonServer(repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(tiny_repo, tiny_checkpoint):
    """audiocraft's window loop on transformers (greedy, guidance 3) for a clip plan."""
    from export import checkpoints
    from export.oracle import hf_window_loop

    model, tok = checkpoints.load(tiny_checkpoint)
    dims = manifest.dims(manifest.read(tiny_repo / "lm_engine" / "1"))
    return lambda plan, audio_prompt=None: hf_window_loop(model, tok, PROMPT, 3.0, plan, dims, None, audio_prompt)


def test_long_clip_equals_transformers_window_loop(long_triton, reference):
    out = generate_http(long_triton, prompt=PROMPT, duration=2.5, top_k=1, guidance_scale=3.0)
    assert out["audio_codes"].shape == (4, 125) and out["audio"].shape == (1, 125 * HOP)
    assert out["prompt_frames"].tolist() == [0]
    plan = window_plan(125, WINDOW, STRIDE)
    assert len(plan) == 4
    ref_codes, ref_audio = reference(plan)
    assert np.array_equal(out["audio_codes"], ref_codes)
    assert np.abs(out["audio"] - ref_audio).max() < 1e-4


def test_long_clip_after_an_audio_prompt(long_triton, tiny_repo, reference):
    from musicgen_runtime.audio_prompt import AudioPromptEncoder

    d = tiny_repo / "lm_engine" / "1"
    encoder = AudioPromptEncoder(d / names.AUDIO_ENCODER_FILE, manifest.dims(manifest.read(d)))
    wave, rate = synth_melody(0.5, 22050, 1, seed=3), 22050
    p = math.ceil(0.5 * 32000 / HOP)
    out = generate_http(
        long_triton, prompt=PROMPT, duration=2.0, top_k=1, audio_prompt=wave, audio_prompt_sample_rate=rate
    )
    assert out["prompt_frames"].tolist() == [p]  # unchanged in meaning: the new music starts there
    assert out["audio_codes"].shape == (4, p + 100) and out["audio"].shape == (1, (p + 100) * HOP)
    prepared = encoder.prepare(wave, rate, max_frames=WINDOW - 1)
    assert np.array_equal(out["audio_codes"][:, :p], encoder.encode(prepared))
    ref_codes, _ = reference(window_plan(p + 100, WINDOW, STRIDE, p), prepared)
    assert np.array_equal(out["audio_codes"], ref_codes)


def test_long_clip_streamed_tiles_the_unary_clip(long_triton):
    events, error = stream(long_triton, prompt=PROMPT, duration=2.5, seed=5)
    assert error is None, error
    progress = [
        (int(r.as_numpy("frames_done")[0]), int(r.as_numpy("frames_total")[0])) for e, r in events if e == "progress"
    ]
    assert {t for _, t in progress} == {125}  # progress counts the whole clip
    done = [d for d, _ in progress]
    assert done == sorted(done) and done[-1] == 125
    first_chunk = next(r for e, r in events if e == "audio_chunk")
    assert int(first_chunk.as_numpy("frames_done")[0]) < WINDOW  # sent during the first window, as a short clip's
    chunks = [(int(r.as_numpy("chunk_start")[0]), r.as_numpy("audio_chunk")) for e, r in events if e == "audio_chunk"]
    pos = 0
    for start, chunk in chunks:
        assert start == pos
        pos += chunk.shape[1]
    final = events[-1][1]
    assert pos == final.as_numpy("audio").shape[1] == 125 * HOP
    unary = generate_http(long_triton, prompt=PROMPT, duration=2.5, seed=5)
    assert np.array_equal(unary["audio_codes"], final.as_numpy("audio_codes"))
    assert np.abs(unary["audio"] - final.as_numpy("audio")).max() < 1e-4  # no seam at window boundaries


def test_too_long_is_400_naming_the_limit(long_triton):
    status, msg = _http_infer(long_triton, "musicgen", {"prompt": PROMPT, "duration": 3.5})
    assert status == 400 and "duration must be in (0, 3] seconds" in msg, msg
    with pytest.raises(InferenceServerException, match=r"audio_prompt is too long: 1.20 s; at most 0.98 s"):
        generate_http(
            long_triton,
            prompt=PROMPT,
            duration=1.0,
            audio_prompt=synth_melody(1.2, 16000, 1, seed=1),
            audio_prompt_sample_rate=16000,
        )


def test_other_requests_unaffected_by_a_long_one(long_triton):
    solo_short = generate_http(long_triton, prompt="drums", duration=0.6, seed=21)
    solo_long = generate_http(long_triton, prompt=PROMPT, duration=2.9, seed=9)
    jobs = [dict(prompt=PROMPT, duration=2.9, seed=9), dict(prompt="drums", duration=0.6, seed=21)]
    jobs += [dict(prompt=PROMPT, duration=4.0), dict(prompt="drums", duration=0.6, seed=21)]
    res = concurrently(generate_http, long_triton, jobs)
    assert np.array_equal(res[0]["audio_codes"], solo_long["audio_codes"]) and res[0]["audio_codes"].shape == (4, 145)
    assert isinstance(res[2], InferenceServerException) and "duration" in str(res[2])
    for r in (res[1], res[3]):
        assert np.array_equal(r["audio_codes"], solo_short["audio_codes"])


def test_client_and_cli_read_the_servers_limit(long_triton, tmp_path):
    import soundfile as sf

    from client import InvalidParameter, MusicGenClient

    with MusicGenClient("http://" + long_triton.http_endpoint) as c:
        assert c.max_duration == 3.0
        with pytest.raises(InvalidParameter, match=r"duration must be in \(0, 3\]"):
            c.generate(PROMPT, 3.5)
    with MusicGenClient(long_triton.grpc_endpoint) as c:
        streamed = c.generate(PROMPT, 2.2, seed=4, stream=True)
        assert streamed.codes.shape == (4, 110) and streamed.audio.shape == (1, 110 * HOP)
    out = tmp_path / "long.wav"
    run = run_cli("generate", PROMPT, "--duration", "2.4", "--url", long_triton.grpc_endpoint, "--out", out, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["frames"] == 120
    assert sf.info(out).frames == 120 * HOP


def test_long_melody_clip_is_conditioned_per_window(melody_triton, melody_repo):
    """A 31 s clip on tiny-random-melody (30 s windows, the default): the second window's melody is the
    melody looped from 18 s; greedy codes equal the engine run in process with the same windows."""
    from test_e2e_melody import generate

    from musicgen_runtime import text
    from musicgen_runtime.lm import GenerationRequest
    from musicgen_runtime.long_form import LongGeneration, LoopedMelody, WindowConfig, prepare, run_together
    from musicgen_runtime.validation import GenerationParams
    from musicgen_runtime.variants import open_language_model

    wave, rate = synth_melody(4.0, 22050, 2, seed=5), 22050
    codes, audio = generate(melody_triton, PROMPT, 31.0, wave, rate, top_k=1, seed=0)
    assert codes.shape == (4, 1550) and audio.shape == (1, 1550 * HOP)

    d = melody_repo / "lm_engine" / "1"
    lm = open_language_model(d, max_rows=2)
    tok = text.PromptTokenizer(melody_repo / "tokenizer" / "1" / names.TOKENIZER_FILE, lm.dims.max_text_tokens)
    enc = text.TextEncoder(melody_repo / "text_encoder" / "1" / names.TEXT_ENCODER_FILE)
    ids, mask = tok.encode([PROMPT])
    request = GenerationRequest(enc(ids, mask)[0], mask[0], GenerationParams(31.0, top_k=1, seed=0), 1550)
    seq = prepare(lm, request, WindowConfig(1500, 900, 50.0), LoopedMelody(wave, rate, lm.chroma_config))
    assert isinstance(seq, LongGeneration) and seq.windows == 2
    assert not np.array_equal(seq.chromas[0], seq.chromas[1])  # each window's own stretch of the melody
    run_together(lm, [seq])
    assert np.array_equal(seq.codes(), codes)
