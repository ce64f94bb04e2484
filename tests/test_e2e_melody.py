"""Melody conditioning through a real tritonserver (tiny-random-melody), and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.parity import hf_greedy_codes
from export.signals import synth_melody
from cli_run import run_cli

PROMPT = "a sad violin solo over a soft piano accompaniment"


def _request(mod, prompt, duration, melody=None, rate=None, **params):
    arrays = {"prompt": np.array([prompt.encode()], dtype=object), "duration": np.array([duration], np.float32)}
    types = {
        "prompt": "BYTES",
        "duration": "FP32",
        "top_k": "INT32",
        "seed": "INT64",
        "guidance_scale": "FP32",
        "melody": "FP32",
        "melody_sample_rate": "INT32",
    }
    if melody is not None:
        arrays["melody"] = np.atleast_2d(melody).astype(np.float32)
    if rate is not None:
        arrays["melody_sample_rate"] = np.array([rate], np.int32)
    for k, v in params.items():
        arrays[k] = np.array([v], {"top_k": np.int32, "seed": np.int64, "guidance_scale": np.float32}[k])
    inputs = []
    for name, arr in arrays.items():
        i = mod.InferInput(name, list(arr.shape), types[name])
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return inputs


def generate(srv, prompt, duration, melody=None, rate=None, **params):
    c = httpclient.InferenceServerClient(srv.http_endpoint, network_timeout=120)
    r = c.infer("musicgen", _request(httpclient, prompt, duration, melody, rate, **params))
    return r.as_numpy("audio_codes"), r.as_numpy("audio")


def test_melody_oracle_through_triton(melody_triton, melody_repo):
    """Greedy codes from Triton with a melody equal transformers' generate with the same chroma."""
    from export import checkpoints
    from musicgen_runtime import chroma, manifest

    man = manifest.read(melody_repo / "lm_engine" / "1")
    wave, rate = synth_melody(3.0, 22050, 2, seed=3), 22050
    features = chroma.chroma(wave, rate, chroma.ChromaConfig.from_manifest(man))
    model, tok = checkpoints.load(checkpoints.resolve("tiny-random-melody").path)
    frames = 30
    ref_codes, ref_audio = hf_greedy_codes(model, tok, PROMPT, steps=frames + 3, chroma=features)
    codes, audio = generate(melody_triton, PROMPT, frames / 50, wave, rate, top_k=1)
    assert np.array_equal(codes, ref_codes)
    assert np.abs(audio - ref_audio).max() < 1e-4
    # the melody matters, and a melody model without a melody generates from text alone
    text_only, _ = generate(melody_triton, PROMPT, frames / 50, top_k=1)
    ref_text, _ = hf_greedy_codes(model, tok, PROMPT, steps=frames + 3)
    assert np.array_equal(text_only, ref_text) and not np.array_equal(text_only, codes)


def test_melody_over_grpc_and_streaming(melody_triton):
    wave = synth_melody(2.0, 44100, 1, seed=1)
    c = grpcclient.InferenceServerClient(melody_triton.grpc_endpoint)
    r = c.infer("musicgen", _request(grpcclient, PROMPT, 1.0, wave, 44100, seed=4))
    assert r.as_numpy("audio_codes").shape == (4, 50)
    import queue

    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        c.async_stream_infer("musicgen_stream", _request(grpcclient, PROMPT, 1.0, wave, 44100, seed=4))
        while True:
            result, error = q.get(timeout=60)
            assert error is None
            if result.as_numpy("event")[0] == b"final":
                break
    finally:
        c.stop_stream()
    assert np.array_equal(result.as_numpy("audio_codes"), r.as_numpy("audio_codes"))


@pytest.mark.parametrize(
    "melody, rate, message",
    [
        (np.zeros((1, 44100), np.float32), 44100, "silent"),
        (np.full((1, 1000), np.nan, np.float32), 16000, "NaN"),
        (np.ones((1, 0), np.float32), 16000, "empty"),
        (np.ones((1, 1000), np.float32) * 0.5, 10, "sample rate"),
        (np.ones((1, 1000), np.float32) * 0.5, None, "melody_sample_rate is required"),
    ],
)
def test_bad_melody_is_refused_and_server_stays_healthy(melody_triton, melody, rate, message):
    with pytest.raises(InferenceServerException, match=message):
        generate(melody_triton, PROMPT, 0.5, melody, rate)
    codes, _ = generate(melody_triton, PROMPT, 0.2, seed=1)
    assert codes.shape == (4, 10)


def test_text_only_model_refuses_a_melody(triton):
    with pytest.raises(InferenceServerException, match="does not take a melody"):
        generate(triton, PROMPT, 0.5, synth_melody(1.0, 16000, 1, seed=0), 16000)


def test_client_and_cli_send_a_melody(melody_triton, triton, tmp_path):

    import soundfile as sf

    from client import InvalidParameter, MusicGenClient

    wave = synth_melody(2.0, 22050, 2, seed=5)
    path = tmp_path / "tune.flac"
    sf.write(path, wave.T, 22050)
    with MusicGenClient(melody_triton.grpc_endpoint) as c:
        from_file = c.generate(PROMPT, 0.5, seed=2, melody=str(path), top_k=1)
        from_array = c.generate(PROMPT, 0.5, seed=2, melody=(wave, 22050), top_k=1, stream=True)
        assert np.array_equal(from_file.codes, from_array.codes)
        assert not np.array_equal(from_file.codes, c.generate(PROMPT, 0.5, seed=2, top_k=1).codes)
        with pytest.raises(InvalidParameter, match="silent"):
            c.generate(PROMPT, 0.5, melody=(np.zeros(8000, np.float32), 16000))
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"not audio at all")
        with pytest.raises(InvalidParameter, match="could not read"):
            c.generate(PROMPT, 0.5, melody=str(bad))
    with MusicGenClient("http://" + triton.http_endpoint) as c:  # a text-only server refuses it
        with pytest.raises(InvalidParameter, match="does not take a melody"):
            c.generate(PROMPT, 0.5, melody=str(path))
    out = tmp_path / "out.wav"
    run = run_cli(
        "generate",
        PROMPT,
        "--duration",
        "0.5",
        "--melody",
        path,
        "--url",
        melody_triton.grpc_endpoint,
        "--out",
        out,
        "-q",
    )
    assert run.returncode == 0, run.stderr
    assert sf.info(out).frames == 16000
    run = run_cli("generate", PROMPT, "--melody", tmp_path / "nope.wav", "--url", melody_triton.grpc_endpoint, "-q")
    assert run.returncode == 2 and "no such file" in run.stderr


def test_melody_model_refuses_an_audio_prompt(melody_triton):
    """Continuation is exported for text-only models: a melody export has no audio encoder and says so."""
    c = httpclient.InferenceServerClient(melody_triton.http_endpoint, network_timeout=120)
    inputs = _request(httpclient, PROMPT, 0.5)
    for name, arr, dt in (
        ("audio_prompt", synth_melody(1.0, 16000, 1, seed=0), "FP32"),
        ("audio_prompt_sample_rate", np.array([16000], np.int32), "INT32"),
    ):
        i = httpclient.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    with pytest.raises(InferenceServerException, match="does not take an audio_prompt"):
        c.infer("musicgen", inputs)
