"""Stereo MusicGen (tiny-random-stereo: 8 codebooks [1L,1R,2L,2R,...], delays [0,0,1,1,2,2,3,3]): export,
parity + greedy oracle against transformers (text only and continued from a stereo prompt), and a real
tritonserver serving 2-channel audio, unary and streamed, text only and continued; the client's WAV."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_e2e_server import generate_http, stream

from export.signals import synth_melody
from musicgen_runtime import manifest, names

from staging import stage_repository
from cli_run import run_cli

PROMPT = "lofi hip hop beat with mellow piano"
HOP, SR, K = 640, 32000, 8


@pytest.fixture(scope="module")
def stereo_repo(tmp_path_factory):
    return stage_repository(tmp_path_factory.mktemp("stereo") / "model_repository", "tiny-random-stereo")


@pytest.fixture(scope="module")
def stereo_triton(stereo_repo):
    from server import TritonServer

    with TritonServer(stereo_repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def prompt_encoder(stereo_repo):
    from musicgen_runtime.audio_prompt import AudioPromptEncoder

    d = stereo_repo / "lm_engine" / "1"
    return AudioPromptEncoder(d / names.AUDIO_ENCODER_FILE, manifest.dims(manifest.read(d)))


def test_verify_stereo_fp32_parity_and_greedy_oracle(stereo_repo):
    from export.verify import verify

    d = manifest.dims(manifest.read(stereo_repo / "lm_engine" / "1"))
    assert (d.num_codebooks, d.audio_channels) == (K, 2)
    report = verify(stereo_repo, steps=24)
    assert report["passed"], report
    assert report["graphs"]["audio_decoder"]["shape"][1] == 2  # both channels, each from its own codebooks
    assert report["codes"]["audio_encoder"]["code_agreement"] == 1.0
    assert report["codes"]["audio_encoder"]["shape"][0] == K  # each channel encoded, codebooks interleaved
    runs = report["greedy_oracle"]["runs"]
    assert all(r["identical"] and r["audio"]["shape"][0] == 2 and r["audio"]["max_abs"] < 1e-4 for r in runs)
    assert sum(r["prompt_frames"] > 0 and "windows" not in r for r in runs) == 2  # a stereo and a mono prompt
    assert sum("windows" in r for r in runs) == 2  # long form on a stereo model: text only, after a prompt


def _chunks(events):
    return [(int(r.as_numpy("chunk_start")[0]), r.as_numpy("audio_chunk")) for e, r in events if e == "audio_chunk"]


def test_stereo_unary_and_stream_serve_two_channels(stereo_triton):
    frames = 60
    out = generate_http(stereo_triton, prompt=PROMPT, duration=frames / 50, seed=11)
    audio = out["audio"]
    assert out["audio_codes"].shape == (K, frames) and audio.shape == (2, frames * HOP)
    assert not np.array_equal(out["audio_codes"][0::2], out["audio_codes"][1::2])  # left and right codebooks
    assert np.abs(audio[0] - audio[1]).max() > 1e-3  # the channels differ

    events, error = stream(stereo_triton, prompt=PROMPT, duration=frames / 50, seed=11)
    assert error is None, error
    chunks, pos = _chunks(events), 0
    assert len(chunks) >= 2
    for start, chunk in chunks:  # 2-channel chunks tiling the clip in order
        assert start == pos and chunk.shape[0] == 2
        pos += chunk.shape[1]
    final = events[-1][1]
    assert pos == final.as_numpy("audio").shape[1] == frames * HOP
    assert np.array_equal(final.as_numpy("audio_codes"), out["audio_codes"])
    assert np.abs(np.concatenate([c for _, c in chunks], axis=1) - audio).max() < 1e-4


def test_stereo_continuation_equals_transformers(stereo_triton, stereo_repo, prompt_encoder):
    from export import checkpoints
    from export.parity import hf_greedy_codes

    wave, rate = synth_melody(0.6, 44100, 2, seed=7), 44100  # stereo prompt: each channel encoded on its own
    p, new = math.ceil(0.6 * SR / HOP), 20
    out = generate_http(
        stereo_triton,
        prompt=PROMPT,
        duration=new / 50,
        top_k=1,
        audio_prompt=wave,
        audio_prompt_sample_rate=rate,
    )
    assert out["prompt_frames"].tolist() == [p]
    assert out["audio_codes"].shape == (K, p + new) and out["audio"].shape == (2, (p + new) * HOP)
    prepared = prompt_encoder.prepare(wave, rate, max_frames=1000)
    assert prepared.shape[0] == 2 and np.array_equal(out["audio_codes"][:, :p], prompt_encoder.encode(prepared))
    model, tok = checkpoints.load(checkpoints.resolve(manifest.read(stereo_repo / "lm_engine" / "1")["source"]).path)
    ref_codes, ref_audio = hf_greedy_codes(model, tok, PROMPT, steps=new + K // 2 - 1, audio_prompt=prepared)
    assert np.array_equal(out["audio_codes"], ref_codes)
    assert np.abs(out["audio"] - ref_audio).max() < 1e-4

    events, error = stream(
        stereo_triton, prompt=PROMPT, duration=new / 50, top_k=1, audio_prompt=wave, audio_prompt_sample_rate=rate
    )
    assert error is None, error
    final = events[-1][1]
    assert np.array_equal(final.as_numpy("audio_codes"), out["audio_codes"])
    assert np.abs(final.as_numpy("audio") - out["audio"]).max() < 1e-4


def test_cli_writes_a_stereo_wav(stereo_triton, tmp_path):
    import soundfile as sf

    out = tmp_path / "stereo.wav"
    run = run_cli(
        "generate",
        PROMPT,
        "--duration",
        "0.3",
        "--seed",
        "3",
        "--url",
        stereo_triton.grpc_endpoint,
        "--out",
        out,
        "--json",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["frames"] == 15
    info = sf.info(out)
    assert (info.channels, info.frames, info.samplerate) == (2, 15 * HOP, SR)
    wav = sf.read(out, dtype="float32")[0]
    assert np.abs(wav[:, 0] - wav[:, 1]).max() > 1e-3


def test_page_plays_and_plots_stereo(stereo_triton, monkeypatch):
    """The page on a stereo server: 2-channel player/downloads, one plot row per channel, a stereo continuation."""
    import io

    import soundfile as sf
    from streamlit.testing.v1 import AppTest

    from staging import ROOT

    monkeypatch.setenv("MUSICGEN_TRITON_URL", stereo_triton.grpc_endpoint)
    at = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=120)
    at.run()
    assert any(m.value == "**Audio:** `32 kHz, stereo`" for m in at.sidebar.markdown)
    buf = io.BytesIO()
    sf.write(buf, synth_melody(0.5, 22050, 2, seed=2).T, 22050, format="WAV")
    at.file_uploader(key="audio_prompt").set_value(("piece.wav", buf.getvalue(), "audio/wav"))
    at.text_area(key="prompt").input(PROMPT)
    at.slider(key="duration").set_value(1.0)
    at.button(key="generate").click().run()
    assert not at.exception and not [e.value for e in at.error if "RANDOM WEIGHTS" not in e.value]
    entry = at.session_state["history"][0]
    assert entry.channels == 2 and entry.prompt_seconds == 25 / 50
    wav, rate = sf.read(io.BytesIO(at.session_state["assets"][entry.number]["files"][("wav", "loudness")]))
    assert rate == SR and wav.shape == ((25 + 50) * HOP, 2) and np.abs(wav[:, 0] - wav[:, 1]).max() > 1e-3
    assert "L = left channel, R = right channel." in [c.value for c in at.caption]
