"""musicgen_runtime.audio_io (no server): BS.1770 loudness, normalisation, WAV/FLAC/OGG/MP3 files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from musicgen_runtime import audio_io

SR = 32000


def _sine(freq=997.0, seconds=3.0, amp=1.0, sr=SR, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    return np.tile((amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), (channels, 1))


def test_k_weighting_at_48k_equals_the_standard():
    (b1, a1), (b2, a2) = audio_io.k_weighting_coefficients(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], rtol=1e-9)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], rtol=1e-9)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], rtol=1e-9)


def test_full_scale_997hz_sine_reads_minus_3_01_lufs():
    # BS.1770's calibration: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS
    assert audio_io.loudness(_sine(sr=48000), 48000) == pytest.approx(-3.01, abs=0.02)
    assert audio_io.loudness(_sine(sr=SR), SR) == pytest.approx(-3.01, abs=0.05)
    # -20 dB quieter reads 20 LU lower; two identical channels add +3 dB (weights 1)
    assert audio_io.loudness(_sine(amp=0.1), SR) == pytest.approx(-23.01, abs=0.05)
    assert audio_io.loudness(_sine(channels=2), SR) == pytest.approx(-0.0, abs=0.05)


def test_gating_ignores_silence_and_silence_is_minus_inf():
    tone = _sine(amp=0.1, seconds=2.0)
    padded = np.concatenate([tone, np.zeros((1, 4 * SR), np.float32)], axis=1)
    # ungated, 4 s of silence after 2 s of tone would read 10*log10(3) = 4.8 LU lower; gated, only the
    # three 400 ms blocks that straddle the edge (partly silent, still above the relative gate) count
    assert audio_io.loudness(padded, SR) == pytest.approx(audio_io.loudness(tone, SR), abs=0.5)
    assert audio_io.loudness(np.zeros((1, SR)), SR) == float("-inf")


def test_loudness_normalisation_reaches_target_with_peak_ceiling():
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal((1, 5 * SR))).astype(np.float32)
    out = audio_io.normalize(noise, SR, "loudness")
    assert out.dtype == np.float32 and out.shape == noise.shape
    assert audio_io.loudness(out, SR) == pytest.approx(-14.0, abs=0.05)
    assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-6
    # a crest-heavy signal: the ceiling wins, no sample clips, loudness ends below the target
    spiky = noise.copy()
    spiky[0, ::SR] = 0.9
    out = audio_io.normalize(spiky, SR, "loudness")
    assert np.abs(out).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    assert audio_io.loudness(out, SR) < -14.0
    # the compressor keeps everything strictly inside (-1, 1)
    out = audio_io.normalize(spiky * 5, SR, "loudness", compressor=True)
    assert np.abs(out).max() < 1.0
    # near silence is left alone
    quiet = np.full((1, SR), 1e-4, np.float32)
    np.testing.assert_array_equal(audio_io.normalize(quiet, SR, "loudness"), quiet)


def test_other_strategies():
    x = _sine(amp=0.3)
    assert np.abs(audio_io.normalize(x, SR, "peak")).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    rms = np.sqrt(np.mean(audio_io.normalize(x, SR, "rms").astype(np.float64) ** 2))
    assert rms == pytest.approx(10 ** (-18 / 20), rel=1e-4)
    assert np.abs(audio_io.normalize(x * 10, SR, "clip")).max() == 1.0
    np.testing.assert_array_equal(audio_io.normalize(x, SR, None), x)
    with pytest.raises(ValueError, match="strategy"):
        audio_io.normalize(x, SR, "lufs")
    with pytest.raises(ValueError, match="NaN"):
        audio_io.normalize(np.full((1, 10), np.nan, np.float32), SR, "peak")


def test_wav_float_is_bit_exact_and_pcm16_within_one_lsb(tmp_path):
    x = _sine(amp=0.5, seconds=1.0, channels=2)
    p = audio_io.write_audio(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    y, sr = audio_io.read_audio(p)
    assert sr == SR and y.shape == (2, SR)
    np.testing.assert_array_equal(y, x)
    p = audio_io.write_audio(tmp_path / "b.wav", x, SR)
    assert sf.info(str(p)).subtype == "PCM_16"
    y, _ = audio_io.read_audio(p)
    assert np.abs(y - x).max() <= 1 / 32768 + 1e-7


def test_flac_ogg_mp3_and_bytes(tmp_path):
    x = _sine(amp=0.5, seconds=1.0)
    p = audio_io.write_audio(tmp_path / "a.flac", x, SR)
    assert sf.info(str(p)).format == "FLAC"
    y, _ = audio_io.read_audio(p)
    assert np.abs(y - x).max() <= 1 / 32768 + 1e-7
    formats = audio_io.writable_formats()
    assert {"wav", "flac"} <= set(formats)
    for ext in ("ogg", "mp3"):
        if ext not in formats:
            continue
        p = audio_io.write_audio(tmp_path / f"a.{ext}", x, SR)
        y, sr = audio_io.read_audio(p)
        assert sr == SR and abs(y.shape[1] - SR) < SR // 10  # lossy: length within codec padding
    data = audio_io.encode_audio(x, SR, "flac")
    y, sr = audio_io.read_audio(data)
    assert sr == SR and y.shape == x.shape


def test_out_of_range_is_clipped_for_integer_formats_and_bad_formats_say_so(tmp_path):
    x = np.array([[2.0, -2.0, 0.5]], np.float32)
    y, _ = audio_io.read_audio(audio_io.write_audio(tmp_path / "c.wav", x, SR))
    assert y[0, 0] == pytest.approx(1.0, abs=1e-4) and y[0, 1] == pytest.approx(-1.0, abs=1e-4)
    with pytest.raises(audio_io.AudioFormatError, match="unsupported audio format '.aac'"):
        audio_io.write_audio(tmp_path / "c.aac", x, SR)
    with pytest.raises(ValueError, match="channels, samples"):
        audio_io.write_audio(tmp_path / "d.wav", np.zeros((SR, 2), np.float32), SR)
