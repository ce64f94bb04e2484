"""Continuation from an audio prompt through a real tritonserver (tiny-random): HTTP unary, gRPC stream,
the greedy oracle against transformers' generate(input_values=...), refusals, a plain request alongside."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_e2e_server import concurrently, generate_http, stream
from tritonclient.utils import InferenceServerException

from export.signals import synth_melody
from musicgen_runtime import names
from cli_run import run_cli

PROMPT = "lofi hip hop beat with mellow piano"
HOP, SR = 640, 32000


def unary(srv, duration=0.4, audio_prompt=None, rate=None, **params):
    if audio_prompt is not None:
        params["audio_prompt"] = np.asarray(audio_prompt, np.float32)
    if rate is not None:
        params["audio_prompt_sample_rate"] = rate
    return generate_http(srv, prompt=PROMPT, duration=duration, **params)


def stream_events(srv, duration, audio_prompt, rate, **params):
    events, error = stream(
        srv,
        prompt=PROMPT,
        duration=duration,
        audio_prompt=np.asarray(audio_prompt, np.float32),
        audio_prompt_sample_rate=rate,
        **params,
    )
    assert error is None, error
    return events


@pytest.fixture(scope="module")
def prompt_encoder(tiny_repo):
    from musicgen_runtime import manifest
    from musicgen_runtime.audio_prompt import AudioPromptEncoder

    d = tiny_repo / "lm_engine" / "1"
    return AudioPromptEncoder(d / names.AUDIO_ENCODER_FILE, manifest.dims(manifest.read(d)))


def test_continuation_unary_equals_transformers_and_stream_tiles_the_clip(triton, tiny_checkpoint, prompt_encoder):
    from export import checkpoints
    from export.parity import hf_greedy_codes

    wave, rate = synth_melody(0.6, 44100, 2, seed=7), 44100  # stereo 44.1 kHz: resampled and mixed by the server
    p = math.ceil(0.6 * SR / HOP)
    new = 20
    out = unary(triton, duration=new / 50, audio_prompt=wave, rate=rate, top_k=1, guidance_scale=3.0)
    assert out["prompt_frames"].tolist() == [p]
    assert out["audio_codes"].shape == (4, p + new) and out["audio"].shape == (1, (p + new) * HOP)
    prepared = prompt_encoder.prepare(wave, rate, max_frames=1000)
    assert np.array_equal(out["audio_codes"][:, :p], prompt_encoder.encode(prepared))  # the prompt's codes first
    # greedy: token for token what transformers' generate(input_values=...) decodes, prompt frames included
    model, tok = checkpoints.load(tiny_checkpoint)
    ref_codes, ref_audio = hf_greedy_codes(model, tok, PROMPT, steps=new + 3, audio_prompt=prepared)
    assert np.array_equal(out["audio_codes"], ref_codes)
    assert np.abs(out["audio"] - ref_audio).max() < 1e-4

    events = stream_events(triton, new / 50, wave, rate, top_k=1, guidance_scale=3.0)
    final = events[-1][1]
    assert final.as_numpy("prompt_frames").tolist() == [p]
    assert np.array_equal(final.as_numpy("audio_codes"), out["audio_codes"])
    pos = 0
    for ev, r in events:  # the chunks tile the whole clip, the prompt's part first
        if ev == "audio_chunk":
            assert int(r.as_numpy("chunk_start")[0]) == pos
            pos += r.as_numpy("audio_chunk").shape[1]
    assert pos == final.as_numpy("audio").shape[1] == (p + new) * HOP
    assert np.abs(final.as_numpy("audio") - out["audio"]).max() < 1e-4


def test_without_a_prompt_prompt_frames_is_zero(triton):
    out = unary(triton, duration=0.2, seed=2)
    assert out["prompt_frames"].tolist() == [0] and out["audio_codes"].shape == (4, 10)


TONE = 0.3 * np.sin(np.arange(16000, dtype=np.float32) * 0.05)[None]


@pytest.mark.parametrize(
    "audio, rate, duration, message",
    [
        (np.zeros((1, 16000), np.float32), 16000, 0.4, "audio_prompt is silent"),
        (np.full((1, 1000), np.nan, np.float32), 16000, 0.4, "audio_prompt contains NaN"),
        (np.full((1, 1000), np.inf, np.float32), 16000, 0.4, "audio_prompt contains NaN or infinite"),
        (np.ones((1, 0), np.float32), 16000, 0.4, "audio_prompt is empty"),
        (
            np.ones((2000, 2), np.float32) * 0.5,
            16000,
            0.4,
            r"audio_prompt of shape .* looks like \[samples, channels\]",
        ),
        (np.ones((12, 2000), np.float32) * 0.5, 16000, 0.4, "audio_prompt has 12 channels; at most 8"),
        (TONE, 500, 0.4, r"audio_prompt sample rate 500 Hz is out of range \[1000, 384000\]"),
        (TONE, 400000, 0.4, r"audio_prompt sample rate 400000 Hz is out of range"),
        (TONE, None, 0.4, "audio_prompt_sample_rate is required with an audio_prompt"),
        (TONE[:, :100], 16000, 0.4, r"audio_prompt is too short: .* at least 0.08 s"),
        (
            0.3 * np.sin(np.arange(31000, dtype=np.float32))[None],
            1000,
            0.4,
            r"audio_prompt is too long: 31.00 s; at most 29.98 s",
        ),
        (TONE, 16000, 121.0, r"duration must be in \(0, 120\] seconds"),  # new music beyond max_duration
    ],
)
def test_bad_audio_prompt_is_refused_by_name(triton, audio, rate, duration, message):
    with pytest.raises(InferenceServerException, match=message):
        unary(triton, duration=duration, audio_prompt=audio, rate=rate)


def test_plain_request_unaffected_by_concurrent_prompts(triton):
    solo = unary(triton, duration=0.6, seed=21)
    jobs = [
        dict(duration=0.6, seed=21),
        dict(duration=0.4, audio_prompt=synth_melody(0.5, 22050, 1, seed=1), rate=22050, seed=3),
        dict(duration=0.4, audio_prompt=np.full((1, 500), np.nan, np.float32), rate=16000),
        dict(duration=0.6, seed=21),
    ]
    res = concurrently(unary, triton, jobs)
    assert isinstance(res[2], InferenceServerException) and "audio_prompt" in str(res[2])
    assert res[1]["prompt_frames"].tolist() == [25] and res[1]["audio_codes"].shape == (4, 45)
    for r in (res[0], res[3]):
        assert r["prompt_frames"].tolist() == [0] and np.array_equal(r["audio_codes"], solo["audio_codes"])
    assert unary(triton, duration=0.1, seed=1)["audio"].shape == (1, 5 * HOP)  # the server is healthy


def test_client_and_cli_continue_a_file(triton, tmp_path):
    import json

    import soundfile as sf

    from client import InvalidParameter, MusicGenClient

    wave = synth_melody(0.5, 22050, 2, seed=6)
    path = tmp_path / "start.flac"
    sf.write(path, wave.T, 22050)
    p = math.ceil(0.5 * SR / HOP)
    with MusicGenClient("http://" + triton.http_endpoint) as c:
        from_file = c.generate(PROMPT, 0.3, seed=2, top_k=1, audio_prompt=str(path))
        assert from_file.prompt_frames == p and from_file.codes.shape == (4, p + 15)
        assert from_file.audio.shape == (1, (p + 15) * HOP)
        assert c.generate(PROMPT, 0.3, seed=2, top_k=1).prompt_frames == 0
        with pytest.raises(InvalidParameter, match="audio_prompt is silent"):
            c.generate(PROMPT, 0.5, audio_prompt=(np.zeros(8000, np.float32), 16000))
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"not audio at all")
        with pytest.raises(InvalidParameter, match="could not read audio_prompt file 'bad.wav'"):
            c.generate(PROMPT, 0.5, audio_prompt=str(bad))
    with MusicGenClient(triton.grpc_endpoint) as c:  # streamed, from the array: the same codes
        streamed = c.generate(
            PROMPT, 0.3, seed=2, top_k=1, audio_prompt=(sf.read(path, dtype="float32")[0].T, 22050), stream=True
        )
        assert streamed.prompt_frames == p and np.array_equal(streamed.codes, from_file.codes)
    out = tmp_path / "out.wav"
    run = run_cli(
        "generate",
        PROMPT,
        "--duration",
        "0.3",
        "--continue-from",
        path,
        "--url",
        triton.grpc_endpoint,
        "--out",
        out,
        "--json",
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["prompt_frames"] == p and summary["frames"] == p + 15
    assert sf.info(out).frames == (p + 15) * HOP
    run = run_cli("generate", PROMPT, "--continue-from", tmp_path / "nope.wav", "--url", triton.grpc_endpoint, "-q")
    assert run.returncode == 2 and "audio_prompt file 'nope.wav': no such file" in run.stderr
