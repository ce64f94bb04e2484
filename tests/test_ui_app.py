"""The Streamlit page driven headlessly (streamlit.testing.v1.AppTest) against a real tritonserver.

Flows: status and banner, generate (streamed and unary), history and reproduce-by-seed, parameter
changes reaching the server, and error paths (invalid form, server-side invalid parameter, server
down, unreadable and too-large melody uploads). No mocks: every request goes to a real server.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "ui" / "app.py")
PROMPT = "lofi hip hop beat with mellow piano"
SR = 32000


def open_page(monkeypatch, url: str) -> AppTest:
    monkeypatch.setenv("MUSICGEN_TRITON_URL", url)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def generate(at: AppTest, prompt: str = PROMPT, duration: float = 1.0, **widgets) -> AppTest:
    at.text_area(key="prompt").input(prompt)
    at.slider(key="duration").set_value(duration)
    for key, value in widgets.items():
        if key in ("top_p",):
            at.slider(key=key).set_value(value)
        elif key in ("model",):
            at.selectbox(key=key).select(value)
        elif key == "seed_mode":
            at.radio(key=key).set_value(value)
        elif key == "seed_text":
            at.text_input(key=key).input(value)
        else:
            at.number_input(key=key).set_value(value)
    at.button(key="generate").click().run()
    assert not at.exception, at.exception
    return at


def wav_samples(data: bytes) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert rate == SR
    return audio


def clip_wav(at: AppTest, number: int) -> bytes:
    """The WAV the page plays and offers for download for result `number` (default levelling)."""
    return at.session_state["assets"][number]["files"][("wav", "loudness")]


def page_errors(at: AppTest) -> list[str]:
    """Error boxes other than the random-weights banner."""
    return [t for t in texts(at.error) if "RANDOM WEIGHTS" not in t]


@pytest.fixture
def url(triton) -> str:
    return triton.grpc_endpoint


def test_status_banner_models_and_disabled_melody(monkeypatch, url):
    at = open_page(monkeypatch, url)
    sidebar = " ".join(texts(at.sidebar.success) + texts(at.sidebar.markdown))
    assert "Ready" in sidebar and url in sidebar
    assert "tiny-random" in sidebar  # which checkpoint
    banner = [t for t in texts(at.error) if "RANDOM WEIGHTS" in t]
    assert banner and "noise, not music" in banner[0]
    assert at.selectbox(key="model").options == ["musicgen_stream (live progress)", "musicgen (no live progress)"]
    uploader = at.file_uploader(key="melody")
    assert uploader.disabled
    assert any("text-only" in t and "musicgen_melody" in t for t in texts(at.caption))
    assert not at.file_uploader(key="audio_prompt").disabled  # a text-only export continues audio prompts
    assert at.slider(key="duration").min == 1.0 and at.slider(key="duration").max == 120.0  # the server's max_duration
    assert not page_errors(at)
    # an example prompt fills the prompt box
    example = at.selectbox(key="example")
    assert len(example.options) >= 4
    example.select(example.options[1]).run()
    assert at.text_area(key="prompt").value == example.options[1]


def test_generate_stream_result_history_and_reproduce(monkeypatch, url):
    at = open_page(monkeypatch, url)
    generate(at, duration=1.5)
    assert not page_errors(at)
    entry = at.session_state["history"][0]
    assert entry.model == "musicgen_stream" and entry.samples == int(1.5 * 50) * 640
    # the player, the four downloads (named by the prompt's first words and the seed), both plots
    assert len(at.get("audio")) == 1
    buttons = at.get("download_button")
    assert [b.label for b in buttons] == ["WAV", "FLAC", "MP3", "OGG"]
    assert all(b.proto.deferred_file_id for b in buttons)  # encoded when clicked, named by ui.logic.file_stem
    assert len(at.get("image")) == 2
    summary = [t for t in texts(at.caption) if "top-k" in t][0]
    assert f"seed {entry.seed_used} (random)" in summary and "1.5 s" in summary
    progress = at.get("progress")
    assert progress and "Done in" in progress[0].proto.text
    first = wav_samples(clip_wav(at, entry.number))
    assert first.shape == (entry.samples, 1)

    # reproduce: "Reuse these settings" fixes the seed to the one used; the audio comes back identical
    at.button(key=f"reuse-{entry.number}").click().run()
    assert at.radio(key="seed_mode").value == "Fixed"
    assert at.text_input(key="seed_text").value == str(entry.seed_used)
    assert at.text_area(key="prompt").value == PROMPT
    at.button(key="generate").click().run()
    assert not at.exception and not page_errors(at)
    history = at.session_state["history"]
    assert [e.number for e in history] == [2, 1]
    again = history[0]
    assert again.seed_used == entry.seed_used and again.params["seed"] == entry.seed_used
    assert np.array_equal(wav_samples(clip_wav(at, again.number)), first)
    # the earlier result is listed with its parameters
    assert any(f"#1 · {PROMPT}" in e.label for e in at.expander)
    assert sum(f"seed {entry.seed_used}" in t for t in texts(at.caption)) == 2


def test_parameter_changes_reach_the_server(monkeypatch, url):
    at = open_page(monkeypatch, url)
    # greedy (top-k 1) ignores the seed: two seeds give the same clip, through the unary model
    common = dict(model="musicgen", top_k=1, temperature=0.7, guidance_scale=1.5, seed_mode="Fixed")
    generate(at, duration=1.0, seed_text="1", **common)
    generate(at, duration=1.0, seed_text="2", **common)
    b, a = at.session_state["history"][:2]
    assert not page_errors(at)
    assert (a.seed_used, b.seed_used) == (1, 2) and a.model == b.model == "musicgen"
    assert a.params["top_k"] == 1 and a.params["temperature"] == pytest.approx(0.7)
    assert a.params["guidance_scale"] == pytest.approx(1.5)
    assert np.array_equal(wav_samples(clip_wav(at, a.number)), wav_samples(clip_wav(at, b.number)))
    # sampling (top-k 250, top-p 0.9) with two seeds differs; duration 2 s gives 2 s of audio
    generate(at, duration=2.0, model="musicgen_stream", top_k=250, top_p=0.9, seed_text="1")
    generate(at, duration=2.0, seed_text="2")
    d, c = at.session_state["history"][:2]
    assert c.params["top_p"] == pytest.approx(0.9) and c.samples == 100 * 640
    assert not np.array_equal(wav_samples(clip_wav(at, c.number)), wav_samples(clip_wav(at, d.number)))


def test_page_audio_is_the_cli_audio(monkeypatch, url, tmp_path):
    """The same request through the page and through `musicgen generate` gives the same file: both level
    it to -14 LUFS with musicgen_runtime.audio_io. Switching the page to 'none' gives the raw output."""
    from client import cli
    from musicgen_runtime import audio_io

    at = open_page(monkeypatch, url)
    generate(at, duration=1.0, seed_mode="Fixed", seed_text="21", top_k=1)
    assert not page_errors(at)
    out = tmp_path / "cli.wav"
    assert (
        cli.main(["generate", PROMPT, "-d", "1", "--seed", "21", "--top-k", "1", "--url", url, "--out", str(out), "-q"])
        == 0
    )
    page = clip_wav(at, 1)
    assert page == out.read_bytes()
    assert audio_io.loudness(wav_samples(page).T, SR) == pytest.approx(-14.0, abs=0.5)
    # levelling is switchable: 'none' re-encodes from the kept raw audio, and the player follows
    at.selectbox(key="normalize").select("none").run()
    assert not at.exception
    raw = at.session_state["assets"][1]["files"][("wav", "none")]
    assert raw != page and at.get("audio")[0].proto.url  # the player now plays the raw clip
    out_raw = tmp_path / "cli-raw.wav"
    assert (
        cli.main(
            [
                "generate",
                PROMPT,
                "-d",
                "1",
                "--seed",
                "21",
                "--top-k",
                "1",
                "--url",
                url,
                "--out",
                str(out_raw),
                "--normalize",
                "none",
                "-q",
            ]
        )
        == 0
    )
    assert raw == out_raw.read_bytes()


def test_invalid_form_values_are_explained(monkeypatch, url):
    at = open_page(monkeypatch, url)
    generate(at, prompt="   ")
    assert any("prompt is empty" in t for t in page_errors(at))
    generate(at, seed_mode="Fixed", seed_text="abc")
    assert any("seed must be a whole number" in t and "'abc'" in t for t in page_errors(at))
    assert at.session_state["history"] == []
    # fixed again: the error goes away and a result appears
    generate(at, seed_text="42")
    assert not page_errors(at) and at.session_state["history"][0].seed_used == 42


def test_server_side_invalid_parameter_is_shown_and_server_stays_ready(monkeypatch, url):
    at = open_page(monkeypatch, url)
    long_prompt = ("a " * 1000).strip()  # 1999 characters: allowed by the page, but > the encoder's 512 tokens
    generate(at, prompt=long_prompt)
    errs = page_errors(at)
    assert any(t.startswith("Invalid parameter:") and "prompt is too long" in t and "tokens" in t for t in errs), errs
    assert at.session_state["history"] == []
    generate(at, prompt=PROMPT)
    assert not page_errors(at) and len(at.session_state["history"]) == 1


def test_server_down(monkeypatch):
    from server.triton import find_free_port

    at = open_page(monkeypatch, f"127.0.0.1:{find_free_port()}")
    side = " ".join(texts(at.sidebar.error))
    assert "Not ready" in side and "cannot reach" in side
    assert not [t for t in texts(at.error) if "RANDOM WEIGHTS" in t]  # no banner without a manifest
    assert at.file_uploader(key="melody").disabled
    generate(at)
    errs = page_errors(at)
    assert any(t.startswith("Server unavailable:") and "make serve" in t for t in errs), errs
    assert at.session_state["history"] == []
    at.button(key="refresh").click().run()  # checking again does not crash either
    assert not at.exception


def test_melody_upload_errors(monkeypatch, melody_triton):
    from ui import logic

    at = open_page(monkeypatch, melody_triton.grpc_endpoint)
    uploader = at.file_uploader(key="melody")
    assert not uploader.disabled and at.file_uploader(key="audio_prompt").disabled  # melody exports do not continue
    at.file_uploader(key="melody").set_value(("tune.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 50, "audio/wav"))
    generate(at)
    assert any("Melody upload" in t and "could not be read as audio" in t for t in page_errors(at))
    big = b"\x00" * (logic.MAX_UPLOAD_MB * 1024 * 1024 + 1)
    at.file_uploader(key="melody").set_value(("big.flac", big, "audio/flac"))
    generate(at)
    assert any("Melody upload" in t and "too large" in t for t in page_errors(at))
    assert at.session_state["history"] == []


def test_generate_with_a_melody_upload(monkeypatch, melody_triton):
    """A melody model: the upload is active and the uploaded tune reaches the server and changes the music."""
    import soundfile as sf

    from export.signals import synth_melody

    buf = io.BytesIO()
    sf.write(buf, synth_melody(2.0, 22050, 1, seed=7).T, 22050, format="WAV")
    at = open_page(monkeypatch, melody_triton.grpc_endpoint)
    generate(at, duration=1.0, seed_mode="Fixed", seed_text="5", top_k=1)
    assert not page_errors(at)
    at.file_uploader(key="melody").set_value(("tune.wav", buf.getvalue(), "audio/wav"))
    generate(at, duration=1.0, seed_mode="Fixed", seed_text="5", top_k=1)
    assert not page_errors(at), page_errors(at)
    with_melody, text_only = at.session_state["history"][:2]
    a = wav_samples(clip_wav(at, with_melody.number))
    b = wav_samples(clip_wav(at, text_only.number))
    assert a.shape == b.shape == (50 * 640, 1) and not np.array_equal(a, b)


def test_continue_an_uploaded_piece(monkeypatch, url):
    """The audio-prompt upload reaches the server: the clip starts with the piece (its codes' length) and the
    page marks where the new music starts; unusable uploads are explained, not sent."""
    import soundfile as sf

    from export.signals import synth_melody

    buf = io.BytesIO()
    sf.write(buf, synth_melody(0.6, 44100, 2, seed=7).T, 44100, format="WAV")
    at = open_page(monkeypatch, url)
    at.file_uploader(key="audio_prompt").set_value(("piece.wav", buf.getvalue(), "audio/wav"))
    generate(at, duration=1.0, seed_mode="Fixed", seed_text="5")
    assert not page_errors(at), page_errors(at)
    entry = at.session_state["history"][0]
    prompt_frames = -(-int(0.6 * SR) // 640)  # ceil(samples at 32 kHz / hop)
    assert entry.prompt_seconds == pytest.approx(prompt_frames / 50)
    assert wav_samples(clip_wav(at, entry.number)).shape == ((prompt_frames + 50) * 640, 1)
    summary = f"Continued: the first {prompt_frames / 50:.2f} s are the uploaded piece, then 1.00 s of new music"
    assert any(t.startswith(summary) for t in texts(at.caption)), texts(at.caption)

    quiet = io.BytesIO()
    sf.write(quiet, np.zeros((16000, 2), np.float32), 16000, format="WAV")
    at.file_uploader(key="audio_prompt").set_value(("quiet.wav", quiet.getvalue(), "audio/wav"))
    generate(at, duration=1.0)
    assert any(t.startswith("Audio prompt: 'quiet.wav' is silent") for t in page_errors(at))
    long = io.BytesIO()
    sf.write(long, synth_melody(30.5, 8000, 1, seed=1).T, 8000, format="WAV")
    at.file_uploader(key="audio_prompt").set_value(("long.wav", long.getvalue(), "audio/wav"))
    generate(at, duration=2.0)
    assert any("must be shorter than the model's window (30 s)" in t for t in page_errors(at))
    assert len(at.session_state["history"]) == 1
