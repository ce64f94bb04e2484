"""Melody input: chroma parity with transformers' MusicgenMelodyFeatureExtractor, resampling, files, bad inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from musicgen_runtime import chroma as C
from musicgen_runtime.chroma import MelodyInputError

torch = pytest.importorskip("torch")
import torchaudio_ref  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def fe():
    return torchaudio_ref.feature_extractor()


def _random_audio(sr: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    """Random tones (random pitches, 4 per second) plus white noise: a clear but random chroma."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    out = []
    for _ in range(channels):
        notes = 110 * 2 ** (rng.integers(0, 36, max(1, int(seconds * 4))) / 12)
        f = np.repeat(notes, -(-n // len(notes)))[:n]
        out.append(0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.1 * rng.standard_normal(n))
    return np.asarray(out, np.float32)


def _hf(fe, wave: np.ndarray, sr: int):
    """(one-hot [T, 12] from the feature extractor's __call__, its normalised chroma before the argmax)."""
    x = torch.tensor(wave)[None]  # [1, channels, samples]: a batch of one (stereo is averaged by the extractor)
    onehot = fe(x if wave.shape[0] == 2 else x[:, 0], sampling_rate=sr, return_tensors="np")["input_features"][0]
    ta = torchaudio_ref.module()
    y = x
    if sr != fe.sampling_rate:
        y = ta.functional.resample(x, sr, fe.sampling_rate, rolloff=0.945, lowpass_filter_width=24)
    y = y.mean(1)[:, : fe.n_samples]
    if y.shape[-1] < fe.n_fft:
        pad = fe.n_fft - y.shape[-1]
        y = torch.nn.functional.pad(y, (pad // 2, pad // 2 + pad % 2))
    raw = torch.einsum("cf,...ft->...ct", fe.chroma_filters, fe.spectrogram(y))
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)[0]
    return onehot, norm.numpy()


@pytest.mark.parametrize("sr", [44100, 22050])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("kind", ["tones", "noise"])
def test_chroma_matches_feature_extractor(fe, sr, channels, kind):
    if kind == "tones":
        wave = _random_audio(sr, 6.3, channels, seed=sr + channels)
    else:
        noise = np.random.default_rng(sr + channels).standard_normal((channels, int(sr * 6.3)))
        wave = (0.3 * noise).astype(np.float32)
    ref_onehot, ref_norm = _hf(fe, wave, sr)
    ours_in = wave if channels == 2 else wave[0]
    norm = C.chroma(ours_in, sr, one_hot=False)
    onehot = C.chroma(ours_in, sr)
    assert onehot.shape == ref_onehot.shape == (1 + int(6.3 * 32000) // 4096, 12)
    assert np.abs(norm - ref_norm).max() < 1e-5  # seen: <= 8e-7
    top2 = np.sort(ref_norm, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4  # frames whose argmax float rounding cannot flip
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(onehot[clear], ref_onehot[clear])
    assert (onehot == ref_onehot).all(axis=-1).mean() >= 0.98  # seen: 1.0


@pytest.mark.parametrize("sr,seconds", [(16000, 31.0), (32000, 0.3), (48000, 2.0)])
def test_truncation_short_audio_and_native_rate(fe, sr, seconds):
    """> 30 s is cut to 235 frames; < one FFT window is centre-padded; 32 kHz is not resampled."""
    wave = _random_audio(sr, seconds, 1, seed=7)
    ref_onehot, ref_norm = _hf(fe, wave, sr)
    ours = C.chroma(wave[0], sr, one_hot=False)
    assert ours.shape == ref_norm.shape
    assert np.abs(ours - ref_norm).max() < 1e-5
    if seconds > 30:
        assert ours.shape[0] == 235
    np.testing.assert_array_equal(C.chroma(wave[0], sr).argmax(-1), ref_onehot.argmax(-1))


def test_filter_bank_matches_transformers():
    from transformers.audio_utils import chroma_filter_bank

    ref = chroma_filter_bank(sampling_rate=32000, num_frequency_bins=16384, tuning=0, num_chroma=12)
    ours = C.chroma_filter_bank(32000, 16384, 12)
    assert ours.shape == ref.shape == (12, 8193)
    assert np.abs(ours - ref).max() < 1e-12


@pytest.mark.parametrize("sr", [44100, 8000, 96000])
def test_resampler_matches_torchaudio_and_direct_path(sr):
    x = np.random.default_rng(sr).standard_normal((2, sr)).astype(np.float32)
    ref = (
        torchaudio_ref.module()
        .functional.resample(torch.tensor(x), sr, 32000, rolloff=0.945, lowpass_filter_width=24)
        .numpy()
    )
    ours = C.resample(x, sr, 32000)
    assert ours.shape == ref.shape == (2, 32000)
    assert np.abs(ours - ref).max() < 1e-5  # seen: 7e-7
    direct = C.resample(x, sr, 32000, max_kernel_elements=0)  # the path for awkward rate pairs
    assert np.abs(direct - ref).max() < 1e-3  # same filter; torchaudio's kernel is computed in float32


def test_awkward_rate_uses_bounded_memory():
    x = _random_audio(44057, 1.0, 1, seed=3)[0]  # gcd(44057, 32000) = 1: a 32000 x 44127 polyphase table
    y = C.resample(x, 44057, 32000)
    assert y.shape == (32000,)
    ref = C.resample(C.resample(x, 44057, 44057), 44057, 32000, max_kernel_elements=0)
    np.testing.assert_allclose(y, ref)


def test_fit_and_null_chroma():
    ch = np.eye(12, dtype=np.float32)[[1, 5, 7]]
    np.testing.assert_array_equal(C.fit_chroma(ch, 7).argmax(-1), [1, 5, 7, 1, 5, 7, 1])
    np.testing.assert_array_equal(C.fit_chroma(ch, 2).argmax(-1), [1, 5])
    assert (C.null_chroma(4)[:, 0] == 1).all() and C.null_chroma(4).sum() == 4


# ---- files ---------------------------------------------------------------------------------------


def _write(fmt: str, wave: np.ndarray, sr: int, subtype=None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.T, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", None)])
def test_read_audio_formats(tmp_path, fmt, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} has no {fmt}")
    wave = _random_audio(44100, 3.0, 2, seed=11)
    data = _write(fmt, wave, 44100, subtype)
    path = tmp_path / f"melody.{fmt.lower()}"
    path.write_bytes(data)
    for source in (path, str(path), data, io.BytesIO(data)):
        got, sr = C.read_audio(source)
        assert sr == 44100 and got.shape[0] == 2 and got.dtype == np.float32
        assert abs(got.shape[1] - wave.shape[1]) <= 2048  # lossy codecs may pad a little
    ch = C.melody_chroma(path)
    assert ch.shape[1] == 12 and set(np.unique(ch)) == {0.0, 1.0} and (ch.sum(-1) == 1).all()
    if fmt == "WAV":  # lossless float: exactly the chroma of the array
        np.testing.assert_array_equal(ch, C.chroma(wave, 44100))


def test_read_audio_limits_decoding(tmp_path):
    wave = _random_audio(8000, 12.0, 1, seed=5)
    got, _ = C.read_audio(_write("WAV", wave, 8000, "FLOAT"), max_seconds=2.0)
    assert got.shape[1] == 3 * 8000  # max_seconds + 1 s of resampler margin


def test_bad_inputs_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MelodyInputError, match="empty"):
        C.melody_chroma(empty)
    with pytest.raises(MelodyInputError, match="empty"):
        C.melody_chroma(b"")
    with pytest.raises(MelodyInputError, match="no such file"):
        C.melody_chroma(tmp_path / "missing.wav")
    junk = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(MelodyInputError, match="could not read melody audio.*Supported formats"):
        C.melody_chroma(junk)
    bad = tmp_path / "notes.flac"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(MelodyInputError, match="could not read melody file 'notes.flac'"):
        C.melody_chroma(bad)
    no_frames = _write("WAV", np.zeros((1, 0), np.float32), 32000, "PCM_16")
    with pytest.raises(MelodyInputError, match="no audio samples"):
        C.melody_chroma(no_frames)
    silent = _write("WAV", np.zeros((2, 32000), np.float32), 32000, "PCM_16")
    with pytest.raises(MelodyInputError, match="silent"):
        C.melody_chroma(silent)
    with pytest.raises(MelodyInputError, match="silent"):
        C.chroma(np.full(16000, 1e-6, np.float32), 16000)
    with pytest.raises(MelodyInputError, match="NaN"):
        C.chroma(np.array([0.1, np.nan] * 8000, np.float32), 16000)
    with pytest.raises(MelodyInputError, match="sample rate"):
        C.chroma(np.ones(16000, np.float32) * 0.1, 0)
    with pytest.raises(MelodyInputError, match="sample rate"):
        C.chroma(np.ones(16000, np.float32) * 0.1, 44100.5)
    with pytest.raises(MelodyInputError, match=r"\[samples, channels\]"):
        C.chroma(np.ones((16000, 2), np.float32) * 0.1, 16000)
    with pytest.raises(MelodyInputError, match="floating point"):
        C.chroma(np.ones(16000, np.int16), 16000)
    with pytest.raises(MelodyInputError, match="needs its sample_rate"):
        C.melody_chroma(np.ones(16000, np.float32))
    with pytest.raises(MelodyInputError, match="file path, bytes"):
        C.melody_chroma(12345)
