"""Audio files and loudness: WAV / FLAC / OGG / MP3 writing and reading, normalisation.

numpy + soundfile only (no torch), so the client, the UI and the benchmarks share it.

Audio is always ``np.float32 [channels, samples]`` in [-1, 1] here, as the server returns it;
soundfile's ``[samples, channels]`` layout stays inside this module.

Normalisation follows the reference implementation's ``audio_write(strategy=...)`` (audiocraft):

* ``"loudness"``: gain to ``-loudness_headroom_db`` LUFS (default -14 LUFS) measured with
  ITU-R BS.1770-4 (K-weighting, 400 ms blocks with 75 % overlap, absolute -70 LUFS and relative
  -10 LU gates), as ``torchaudio.transforms.Loudness`` which audiocraft uses. The K-weighting
  biquads are designed for the actual sample rate (the libebur128 formulas) and applied as an
  exact linear filter through a zero-padded FFT. Clipping protection differs from audiocraft,
  which just clamps: with ``compressor=True`` the signal goes through ``tanh`` (audiocraft's
  ``loudness_compressor``); otherwise, when the gained peak would exceed ``peak_ceiling_db``
  (-1 dBFS), the gain is lowered so the peak sits at the ceiling — quieter than the target
  rather than clipped. Signals whose RMS is under ``energy_floor`` (near silence) are left alone.
* ``"peak"``: peak to ``-peak_clip_headroom_db`` dBFS (default -1 dBFS).
* ``"rms"``: RMS to ``-rms_headroom_db`` dBFS (default -18 dBFS), then clipped to [-1, 1].
* ``"clip"``: clipped to [-1, 1]; ``None`` / ``"none"``: untouched.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

# file extension -> (libsndfile format, default subtype)
_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
STRATEGIES = ("none", "clip", "peak", "rms", "loudness")
TARGET_LUFS = -14.0


class AudioFormatError(ValueError):
    """A file format this libsndfile cannot write (e.g. MP3 on an old libsndfile)."""


# ------------------------------------------------------------------------------------------------
# formats
# ------------------------------------------------------------------------------------------------


def writable_formats() -> list[str]:
    """File extensions (without dot) the installed libsndfile can write, e.g. ['wav', 'flac', 'ogg', 'mp3']."""
    import soundfile as sf

    have = sf.available_formats()
    return [ext[1:] for ext, (fmt, _) in _FORMATS.items() if fmt in have]


def format_for(path: str | Path | None = None, fmt: str | None = None) -> tuple[str, str]:
    """(libsndfile format, default subtype) for an explicit format name or a file's extension."""
    ext = "." + fmt.lower().lstrip(".") if fmt else Path(path or "").suffix.lower()
    if ext not in _FORMATS:
        known = ", ".join(writable_formats())
        raise AudioFormatError(f"unsupported audio format {ext or '(none)'!r}: use one of {known}")
    name, subtype = _FORMATS[ext]
    import soundfile as sf

    if name not in sf.available_formats():
        raise AudioFormatError(
            f"this libsndfile ({sf.__libsndfile_version__}) cannot write {name}; "
            f"use one of {', '.join(writable_formats())}"
        )
    return name, subtype


# ------------------------------------------------------------------------------------------------
# loudness (ITU-R BS.1770-4)
# ------------------------------------------------------------------------------------------------


def _as_channels(audio) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"audio must be [channels, samples] (or [samples]), got shape {list(a.shape)}")
    return a


def k_weighting_coefficients(sample_rate: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads (b, a) of BS.1770 for `sample_rate` (libebur128's design).

    At 48 kHz they equal the coefficients printed in the standard.
    """
    fs = float(sample_rate)
    # stage 1: high shelf (head effects)
    f0, g, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / fs)
    vh = 10.0 ** (g / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = (
        np.array([(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]),
        np.array([1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]),
    )
    # stage 2: high pass (RLB)
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / fs)
    d = 1.0 + k / q + k * k
    highpass = (np.array([1.0, -2.0, 1.0]), np.array([1.0, 2.0 * (k * k - 1.0) / d, (1.0 - k / q + k * k) / d]))
    return [shelf, highpass]


def k_weight(audio, sample_rate: float) -> np.ndarray:
    """Apply the K-weighting filter (causal IIR, zero initial state) along the last axis.

    Implemented as multiplication by the filters' frequency response on a zero-padded FFT, which is
    the exact linear filter up to the impulse-response tail beyond the padding (a few hundred ms of
    padding: the slowest pole decays below 1e-9 well within it).
    """
    a = _as_channels(audio)
    n = a.shape[1]
    pad = int(0.5 * sample_rate)
    nfft = 1 << int(math.ceil(math.log2(max(n + pad, 2))))
    w = np.exp(-2j * np.pi * np.fft.rfftfreq(nfft))  # z^-1 on the unit circle
    h = np.ones_like(w)
    for b, den in k_weighting_coefficients(sample_rate):
        h *= (b[0] + b[1] * w + b[2] * w * w) / (den[0] + den[1] * w + den[2] * w * w)
    return np.fft.irfft(np.fft.rfft(a, nfft, axis=1) * h, nfft, axis=1)[:, :n]


def loudness(audio, sample_rate: float) -> float:
    """Integrated loudness in LUFS (BS.1770-4, all channel weights 1). -inf for silence.

    Clips shorter than one 400 ms block are measured as a single block.
    """
    y = k_weight(audio, sample_rate)
    n = y.shape[1]
    block = int(round(0.4 * sample_rate))
    hop = int(round(0.1 * sample_rate))
    if n < block:
        z = (y**2).mean(axis=1, keepdims=True)  # [C, 1]
    else:
        csum = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(y**2, axis=1)], axis=1)
        starts = np.arange(0, n - block + 1, hop)
        z = (csum[:, starts + block] - csum[:, starts]) / block  # [C, blocks]
    power = z.sum(axis=0)  # channel weights G_i = 1 (L, R, C)
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10.0 * np.log10(power)
    gated = power[lk > -70.0]
    if gated.size == 0:
        return float("-inf")
    relative = -0.691 + 10.0 * math.log10(gated.mean()) - 10.0
    gated = power[(lk > -70.0) & (lk > relative)]
    if gated.size == 0:
        return float("-inf")
    return float(-0.691 + 10.0 * math.log10(gated.mean()))


# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------


def normalize(
    audio,
    sample_rate: float,
    strategy: str | None = "loudness",
    *,
    loudness_headroom_db: float = 14.0,
    peak_clip_headroom_db: float = 1.0,
    rms_headroom_db: float = 18.0,
    peak_ceiling_db: float = -1.0,
    compressor: bool = False,
    energy_floor: float = 2e-3,
) -> np.ndarray:
    """A normalised float32 copy of `audio` [channels, samples]; see the module doc for the strategies."""
    strategy = (strategy or "none").lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"normalisation strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    src = np.asarray(audio, dtype=np.float32)
    a = src.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("audio contains NaN or infinite samples")
    if strategy == "none":
        return src.copy()
    if strategy == "clip":
        return np.clip(a, -1.0, 1.0).astype(np.float32)
    peak = float(np.abs(a).max()) if a.size else 0.0
    if strategy == "peak":
        if peak == 0.0:
            return src.copy()
        return (a * (10.0 ** (-peak_clip_headroom_db / 20.0) / peak)).astype(np.float32)
    rms = float(np.sqrt(np.mean(a**2))) if a.size else 0.0
    if strategy == "rms":
        if rms == 0.0:
            return src.copy()
        return np.clip(a * (10.0 ** (-rms_headroom_db / 20.0) / rms), -1.0, 1.0).astype(np.float32)
    # loudness
    if rms < energy_floor:
        return src.copy()
    current = loudness(a, sample_rate)
    if not math.isfinite(current):
        return src.copy()
    gain = 10.0 ** ((-loudness_headroom_db - current) / 20.0)
    if compressor:
        return np.tanh(a * gain).astype(np.float32)
    ceiling = 10.0 ** (peak_ceiling_db / 20.0)
    if peak * gain > ceiling:
        gain = ceiling / peak
    return (a * gain).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


def _prepare(audio, subtype: str) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] > a.shape[1] and a.shape[0] > 8:
        raise ValueError(f"audio must be [channels, samples], got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError("audio contains NaN or infinite samples")
    if not subtype.startswith(("FLOAT", "DOUBLE")):
        a = np.clip(a, -1.0, 1.0)  # integer and lossy encoders would wrap or distort past full scale
    return np.ascontiguousarray(a.T)


def write_audio(
    path: str | Path,
    audio,
    sample_rate: int,
    *,
    format: str | None = None,
    subtype: str | None = None,
    normalize_strategy: str | None = None,
    **normalize_kw,
) -> Path:
    """Write `audio` [channels, samples] to `path` (format from `format` or the extension).

    WAV and FLAC default to 16-bit PCM (as audiocraft's audio_write), OGG to Vorbis, MP3 to
    MPEG layer III (only where libsndfile has it: see :func:`writable_formats`). Pass
    ``subtype="FLOAT"`` for a bit-exact WAV. Returns the path written.
    """
    import soundfile as sf

    path = Path(path)
    fmt, default_subtype = format_for(path, format)
    subtype = subtype or default_subtype
    if normalize_strategy not in (None, "none"):
        audio = normalize(audio, sample_rate, normalize_strategy, **normalize_kw)
    data = _prepare(audio, subtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, int(sample_rate), format=fmt, subtype=subtype)
    return path


def encode_audio(
    audio,
    sample_rate: int,
    format: str = "wav",
    *,
    subtype: str | None = None,
    normalize_strategy: str | None = None,
    **normalize_kw,
) -> bytes:
    """The bytes of an audio file (for downloads and web pages) without touching the disk."""
    import soundfile as sf

    fmt, default_subtype = format_for(fmt=format)
    subtype = subtype or default_subtype
    if normalize_strategy not in (None, "none"):
        audio = normalize(audio, sample_rate, normalize_strategy, **normalize_kw)
    buf = io.BytesIO()
    sf.write(buf, _prepare(audio, subtype), int(sample_rate), format=fmt, subtype=subtype)
    return buf.getvalue()


def read_audio(source) -> tuple[np.ndarray, int]:
    """(audio float32 [channels, samples], sample_rate) from a path, bytes or a file object."""
    import soundfile as sf

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    data, sr = sf.read(source if not isinstance(source, Path) else str(source), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)
