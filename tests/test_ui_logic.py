"""Unit tests of the page's pure logic (ui/logic.py) and media helpers (ui/media.py): no server, no browser."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("streamlit")  # the `ui` extra; ui/ itself needs only numpy/soundfile/matplotlib here
pytest.importorskip("matplotlib")

from musicgen_runtime.validation import GenerationParams, ValidationError  # noqa: E402
from ui import logic, media  # noqa: E402


# ---- parameters ------------------------------------------------------------------------------------


def test_parse_seed_random_and_fixed():
    assert logic.parse_seed(logic.SEED_RANDOM, "whatever") is None
    assert logic.parse_seed(logic.SEED_FIXED, " 42 ") == 42
    assert logic.parse_seed(logic.SEED_FIXED, "1_000") == 1000
    assert logic.parse_seed(logic.SEED_FIXED, str(2**63 - 1)) == 2**63 - 1
    assert logic.parse_seed(logic.SEED_FIXED, 7) == 7


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "seed is empty"),
        ("abc", "whole number"),
        ("1.5", "whole number"),
        ("-1", "[0, 2^63)"),
        (str(2**63), "[0, 2^63)"),
    ],
)
def test_parse_seed_rejects(text, needle):
    with pytest.raises(ValidationError) as err:
        logic.parse_seed(logic.SEED_FIXED, text)
    assert needle in str(err.value)


def test_build_request_ok_and_messages_name_the_parameter():
    prompt, params = logic.build_request("  lo-fi beat ", 8.0, 250, 0.0, 1.0, 3.0, logic.SEED_FIXED, "5")
    assert prompt == "lo-fi beat"
    assert params == GenerationParams(duration=8.0, top_k=250, top_p=0.0, temperature=1.0, guidance_scale=3.0, seed=5)
    with pytest.raises(ValidationError, match="prompt is empty"):
        logic.build_request("   ", 8.0, 250, 0.0, 1.0, 3.0, logic.SEED_RANDOM, "")
    with pytest.raises(ValidationError, match="duration"):
        logic.build_request("x", 121.0, 250, 0.0, 1.0, 3.0, logic.SEED_RANDOM, "")
    with pytest.raises(ValidationError, match="duration"):
        logic.build_request("x", 12.0, 250, 0.0, 1.0, 3.0, logic.SEED_RANDOM, "", max_duration=10)
    with pytest.raises(ValidationError, match="temperature"):
        logic.build_request("x", 8.0, 250, 0.0, 0.0, 3.0, logic.SEED_RANDOM, "")
    with pytest.raises(ValidationError, match="guidance_scale"):
        logic.build_request("x", 8.0, 250, 0.0, 1.0, 0.5, logic.SEED_RANDOM, "")
    with pytest.raises(ValidationError, match="top_p"):
        logic.build_request("x", 8.0, 250, 1.5, 1.0, 3.0, logic.SEED_RANDOM, "")
    with pytest.raises(ValidationError, match="too long"):
        logic.build_request("x" * 2001, 8.0, 250, 0.0, 1.0, 3.0, logic.SEED_RANDOM, "")


def test_examples_are_valid_prompts():
    assert len(logic.EXAMPLE_PROMPTS) >= 4
    for p in logic.EXAMPLE_PROMPTS:
        logic.build_request(p, 5, 250, 0, 1, 3, logic.SEED_RANDOM, "")


# ---- progress / ETA --------------------------------------------------------------------------------


def test_progress_eta_from_measured_rate():
    p = logic.Progress(started=100.0)
    assert p.fraction == 0.0 and p.eta(100.5) is None
    assert p.text(101.0).startswith("Starting…")
    p.update(102.0, 0, 500)  # first event after 2 s of start-up: not counted in the rate
    assert p.eta(102.0) is None and "estimating" in p.text(102.0)
    p.update(104.0, 100, 500)  # 50 frames/s
    assert p.rate() == pytest.approx(50.0)
    assert p.eta(104.0) == pytest.approx(8.0)
    assert p.eta(105.0) == pytest.approx(7.0)  # counts down between events
    assert p.eta(200.0) == 0.0  # never negative
    assert p.fraction == pytest.approx(0.2)
    text = p.text(104.0)
    assert "20%" in text and "0:04 elapsed" in text and "about 0:08 left" in text and "100/500 frames" in text
    assert p.text(104.0, "zh") == "20% · 已用 0:04 · 约剩 0:08 · 100/500 帧"
    p.update(110.0, 500, 500)
    assert p.eta(110.0) == 0.0 and "decoding" in p.text(110.0)


def test_progress_prior_rate_and_monotonic():
    p = logic.Progress(started=0.0, prior_rate=25.0)
    p.update(1.0, 0, 250)
    assert p.eta(1.0) == pytest.approx(10.0)  # from the earlier generation's speed
    p.update(2.0, 50, 250)
    p.update(2.5, 40, 250)  # out of order: ignored
    assert p.frames_done == 50
    p.audio_seconds = 1.0
    assert "1.0 s of audio ready" in p.text(2.5)


def test_format_helpers():
    assert logic.format_clock(7.4) == "0:07"
    assert logic.format_clock(65) == "1:05"
    assert logic.format_clock(3723) == "1:02:03"
    assert logic.format_clock(None) == "–"
    assert logic.format_clock(float("inf")) == "–"
    assert logic.format_seconds(3.21) == "3.2 s"
    assert logic.format_seconds(125) == "2:05"
    assert logic.format_bytes(512) == "512 B"
    assert logic.format_bytes(25 * 1024 * 1024) == "25.0 MB"


# ---- server facts ----------------------------------------------------------------------------------

MANIFEST = {
    "source": "tiny-random",
    "model_type": "musicgen",
    "precision": "fp32",
    "random_weights": True,
    "dims": {"sample_rate": 32000, "audio_channels": 1, "frame_rate": 50.0},
}


def test_generation_models_filters_internal_and_not_ready():
    index = [
        {"name": "audio_decoder", "state": "READY"},
        {"name": "musicgen", "state": "READY"},
        {"name": "musicgen_info", "state": "READY"},
        {"name": "musicgen_stream", "state": "READY"},
        {"name": "lm_engine", "state": "READY"},
        {"name": "musicgen_large_stream", "state": "UNAVAILABLE"},
        {"name": "musicgen_lm", "state": "READY"},
        {"name": "tokenizer"},
        {"name": "text_encoder"},
    ]
    assert logic.generation_models(index) == ["musicgen_stream", "musicgen"]
    assert logic.generation_models(["musicgen", "musicgen_stream"]) == ["musicgen_stream", "musicgen"]
    assert logic.model_label("musicgen_stream").endswith("(live progress)")
    assert logic.is_streaming("musicgen_stream") and not logic.is_streaming("musicgen")


def test_melody_support_and_banner():
    ok, why = logic.melody_support(MANIFEST)
    assert not ok and "text-only" in why and "musicgen_melody" in why and "tiny-random" in why
    ok, why = logic.melody_support({**MANIFEST, "model_type": "musicgen_melody"})
    assert ok
    ok, why = logic.melody_support(None)
    assert not ok and "not reachable" in why
    assert logic.random_weights(MANIFEST) and not logic.random_weights({**MANIFEST, "random_weights": False})
    assert not logic.random_weights(None)
    facts = dict(logic.manifest_facts(MANIFEST))
    assert facts["Checkpoint"] == "tiny-random" and facts["Audio"] == "32 kHz, mono"
    assert "noise, not music" in logic.random_weights_banner(MANIFEST) and "tiny-random" in logic.random_weights_banner(
        MANIFEST
    )
    assert "噪声" in logic.random_weights_banner(MANIFEST, "zh")
    assert dict(logic.manifest_facts(MANIFEST, "zh"))["音频"] == "32 kHz，单声道"
    assert "只接受文字" in logic.melody_support(MANIFEST, "zh")[1]


def test_result_entry_reproduce_and_summaries():
    params = GenerationParams(duration=2.0, top_k=50, top_p=0.9, temperature=0.8, guidance_scale=3.0, seed=None)
    e = logic.make_entry(3, "Lo-fi: hip hop / beat!!", "musicgen_stream", params, 1234, 32000, 1, 64000, 4.0)
    assert e.audio_seconds == 2.0 and e.realtime_factor == 0.5
    assert e.reproduce_params()["seed"] == 1234 and e.params["seed"] is None
    s = logic.params_summary(e)
    assert "seed 1234 (random)" in s and "top-k 50" in s and "top-p 0.9" in s and "musicgen_stream" in s
    assert "2.0 s of audio in 4.0 s" in logic.timing_summary(e)
    assert logic.file_stem(e) == "musicgen-3-lo-fi-hip-hop-beat-seed1234"
    assert "种子 1234（随机）" in logic.params_summary(e, "zh") and "4.0 秒" in logic.timing_summary(e, "zh")
    zh = logic.make_entry(4, "轻松的 钢琴曲 夜晚", "musicgen", params, 9, 32000, 1, 64000, 4.0)
    assert logic.file_stem(zh) == "musicgen-4-轻松的-钢琴曲-夜晚-seed9"  # the prompt's first words and the seed


def test_md_escape_keeps_user_text_literal():
    assert logic.md_escape("**bold** [x](y) $a$") == r"\*\*bold\*\* \[x\]\(y\) \$a\$"
    assert logic.md_escape("two\n\nlines") == "two lines"


# ---- media -----------------------------------------------------------------------------------------


def _tone(seconds=0.5, rate=32000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t)] * channels).astype(np.float32), rate


def test_downloads_in_four_formats_levelled_like_the_cli():
    """Every download format encodes and decodes back; 'loudness' gives -14 LUFS through the CLI's code."""
    from musicgen_runtime import audio_io

    audio, rate = _tone(2.0)
    audio *= 0.05  # quiet: the loudness normalisation has to raise it
    asset = {"audio": audio, "rate": rate}
    assert set(logic.DOWNLOAD_FORMATS) == {"wav", "flac", "mp3", "ogg"}
    assert set(logic.NORMALIZE_CHOICES) == set(audio_io.STRATEGIES) and logic.NORMALIZE_DEFAULT == "loudness"
    for fmt in logic.DOWNLOAD_FORMATS:
        assert media.format_supported(fmt), f"libsndfile here cannot write {fmt}"
        data = media.clip_file(asset, fmt, "loudness")
        assert data and media.clip_file(asset, fmt, "loudness") is data  # encoded once
        back, r = audio_io.read_audio(data)
        assert r == rate and back.shape[0] == 1 and abs(back.shape[1] - audio.shape[1]) < 4096
        if fmt in ("wav", "flac"):  # lossless: on target
            assert audio_io.loudness(back, rate) == pytest.approx(-14.0, abs=0.1)
        else:
            assert audio_io.loudness(back, rate) == pytest.approx(-14.0, abs=1.0)
    assert media.clip_file(asset, "wav", "loudness") == audio_io.encode_audio(
        audio, rate, "wav", normalize_strategy="loudness"
    )
    raw, _ = audio_io.read_audio(media.clip_file(asset, "wav", "none"))
    assert audio_io.loudness(raw, rate) < -30.0  # 'none': as generated


def test_encode_wav_and_mp3_roundtrip():
    import soundfile as sf

    audio, rate = _tone()
    wav = media.encode(audio, rate, "wav")
    assert wav[:4] == b"RIFF"
    back, r = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    assert r == rate and back.shape == (audio.shape[1], 1)
    assert np.max(np.abs(back[:, 0] - audio[0])) < 1e-3
    nan = audio.copy()
    nan[0, :10] = np.nan  # never crash on a bad sample
    assert media.encode(nan, rate, "wav")[:4] == b"RIFF"
    if media.mp3_supported():
        mp3 = media.try_encode(audio, rate, "mp3")
        assert mp3 and len(mp3) > 100
    assert media.try_encode(audio, rate, "xyz") is None


def test_plots_render_png():
    audio, rate = _tone(channels=2)
    for fig in (media.waveform_figure(audio, rate), media.spectrogram_figure(audio, rate)):
        png = media.figure_png(fig)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    db = media.spectrogram_db(audio[0], n_fft=1024, hop=256)
    peak_bin = int(np.argmax(db.mean(axis=1)))
    assert abs(peak_bin * rate / 1024 - 440) < rate / 1024 * 1.5  # the tone's frequency
    # empty and very short clips still plot
    media.figure_png(media.waveform_figure(np.zeros((1, 0), np.float32), rate))
    media.figure_png(media.spectrogram_figure(np.zeros((1, 10), np.float32), rate))


def test_decode_upload_ok_and_errors():
    audio, rate = _tone(1.0, 16000, 2)
    wav = media.encode(audio, rate, "wav")
    got, r = media.decode_upload("tune.WAV", wav)
    assert r == 16000 and got.shape == (2, 16000)
    with pytest.raises(media.UploadError, match="not a supported audio file"):
        media.decode_upload("notes.txt", b"hello")
    with pytest.raises(media.UploadError, match="could not be read as audio"):
        media.decode_upload("broken.wav", b"RIFF....WAVEfmt garbage" * 10)
    with pytest.raises(media.UploadError, match="too large"):
        media.decode_upload("big.wav", wav, max_bytes=1000)
    with pytest.raises(media.UploadError, match="empty"):
        media.decode_upload("empty.mp3", b"")
    with pytest.raises(media.UploadError, match="at most 0.4 s"):
        media.decode_upload("long.wav", wav, max_seconds=0.4)
    with pytest.raises(media.UploadError, match="太大"):
        media.decode_upload("big.wav", wav, max_bytes=1000, lang="zh")


# ---- continuation (audio prompt), server duration limit, stereo plots ----------------------------------


def test_duration_limit_is_the_servers():
    assert logic.duration_limit(120.0) == 120.0  # a long-form server: not capped at 30 s
    assert logic.duration_limit(12.5) == 12.5
    assert logic.duration_limit(None) == logic.DURATION_MAX == 120.0  # the default limit until the server answers
    assert logic.duration_limit(0.2) == logic.DURATION_MIN


def test_continuation_support():
    files = {"audio_encoder.onnx": {}, "decoder_step.onnx": {}}
    assert logic.continuation_support({**MANIFEST, "files": files})[0]
    ok, why = logic.continuation_support({**MANIFEST, "files": {"decoder_step.onnx": {}}})
    assert not ok and "does not take an audio prompt" in why
    ok, why = logic.continuation_support({**MANIFEST, "model_type": "musicgen_melody", "files": files})
    assert not ok and "musicgen_melody" in why
    ok, why = logic.continuation_support(None)
    assert not ok and "not reachable" in why


def test_audio_prompt_upload_to_request():
    """An uploaded file -> (wave [channels, samples], rate) as the client sends it; bad files -> a message."""
    from client import MusicGenClient

    audio, rate = _tone(1.0, 44100, 2)
    audio[1] *= 0.5  # a real stereo file: the channels differ
    flac = media.encode(audio, rate, "flac")
    wave, r = media.decode_audio_prompt("piece.flac", flac, window_seconds=30.0)
    assert r == 44100 and wave.shape == (2, 44100) and wave.dtype == np.float32
    assert np.abs(wave - audio).max() < 1e-3
    sent, sent_rate = MusicGenClient.prepare_audio_prompt((wave, r))  # what the page's request carries
    assert sent_rate == 44100 and np.array_equal(sent, wave)

    with pytest.raises(media.UploadError, match="could not be read as audio"):
        media.decode_audio_prompt("broken.wav", b"RIFF....WAVEfmt garbage" * 10, 30.0)
    silent = media.encode(np.zeros((2, 16000), np.float32), 16000, "wav", normalize=None)
    with pytest.raises(media.UploadError, match="'quiet.wav' is silent"):
        media.decode_audio_prompt("quiet.wav", silent, 30.0)
    long = media.encode(*_tone(5.0, 8000, 1), "wav")
    with pytest.raises(media.UploadError, match=r"\(5.0 s\) must be shorter than the model's window \(5 s\)"):
        media.decode_audio_prompt("long.wav", long, 5.0)
    assert media.decode_audio_prompt("long.wav", long, 5.02)[0].shape == (1, 40000)  # shorter than the window
    with pytest.raises(media.UploadError, match="必须短于模型的窗口（4 秒）"):
        media.decode_audio_prompt("long.wav", long, 4.0, lang="zh")


def test_stereo_plots_one_row_per_channel_with_the_prompt_boundary():
    audio, rate = _tone(1.0, 32000, 2)
    audio[1] *= 0.25
    for make in (media.waveform_figure, media.spectrogram_figure):
        fig = make(audio, rate, prompt_seconds=0.4)
        assert [ax.get_ylabel().split()[0] for ax in fig.axes] == ["L", "R"]
        for ax in fig.axes:  # the dashed line where the new music starts, on every channel
            assert [list(line.get_xdata()) for line in ax.get_lines()] == [[0.4, 0.4]]
        assert media.figure_png(fig)[:4] == b"\x89PNG"
    mono = media.waveform_figure(audio[:1], rate)
    assert len(mono.axes) == 1 and not mono.axes[0].get_lines()
    e = logic.make_entry(1, "p", "musicgen", GenerationParams(2.0), 1, 32000, 2, 3 * 32000, 1.0, prompt_seconds=1.0)
    assert logic.continuation_summary(e) == (
        "Continued: the first 1.00 s are the uploaded piece, then 2.00 s of new music (the dashed line in the plots)."
    )
    assert (
        logic.continuation_summary(logic.make_entry(2, "p", "musicgen", GenerationParams(2.0), 1, 32000, 2, 1, 1)) == ""
    )
