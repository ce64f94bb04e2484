"""Audio for the page: encoding for the player and downloads, waveform/spectrogram plots, melody uploads.

Encoding, loudness normalisation and decoding go through the project's `musicgen_runtime.audio_io`,
the code the `musicgen` command line writes its files with (soundfile/libsndfile: WAV and FLAC
everywhere, OGG/Vorbis and MP3 where libsndfile ≥ 1.1 was built with them).
"""

from __future__ import annotations

import io
from pathlib import PurePath

import numpy as np

from musicgen_runtime import audio_io

from . import logic
from .strings import t


class UploadError(ValueError):
    """An uploaded melody the page cannot use; the message is shown to the user as is."""


# ---- encoding ------------------------------------------------------------------------------------


def encode(audio: np.ndarray, sample_rate: int, fmt: str, normalize: str | None = None) -> bytes:
    """Bytes of `audio` ([channels, samples] float, as the server returns it) as 'wav' (16-bit PCM),
    'flac', 'ogg' (Vorbis) or 'mp3', levelled by `normalize` (an audio_io strategy, e.g. 'loudness'
    = -14 LUFS as the CLI's default; None = as generated). Raises audio_io.AudioFormatError when this
    host cannot write `fmt`."""
    a = np.nan_to_num(np.asarray(audio, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return audio_io.encode_audio(a, int(sample_rate), fmt, normalize_strategy=normalize)


def format_supported(fmt: str) -> bool:
    try:
        return fmt in audio_io.writable_formats()
    except Exception:
        return False


def mp3_supported() -> bool:
    return format_supported("mp3")


def try_encode(audio: np.ndarray, sample_rate: int, fmt: str, normalize: str | None = None) -> bytes | None:
    """Like `encode`, but None when the format cannot be written here (the page hides that button)."""
    try:
        return encode(audio, sample_rate, fmt, normalize)
    except Exception:
        return None


def clip_file(asset: dict, fmt: str, normalize: str) -> bytes | None:
    """One result's file in `fmt`, levelled by `normalize`; encoded on first use and kept in `asset`
    ({"audio", "rate", "files"}: what the page stores per result)."""
    files = asset.setdefault("files", {})
    if (fmt, normalize) not in files:
        files[(fmt, normalize)] = try_encode(asset["audio"], asset["rate"], fmt, normalize)
    return files[(fmt, normalize)]


# ---- plots ---------------------------------------------------------------------------------------


def _figure(height: float = 2.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state shared between sessions

    fig = Figure(figsize=(8, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _mono(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    return a.mean(axis=0) if a.ndim == 2 else a.reshape(-1)


def waveform_figure(audio: np.ndarray, sample_rate: int, max_points: int = 4000):
    """Min/max envelope of the (mono mix of the) clip against time."""
    fig, ax = _figure()
    x = _mono(audio)
    n = x.size
    if n:
        bins = max(1, min(max_points, n))
        edges = np.linspace(0, n, bins + 1).astype(int)
        lo = np.array([x[a:b].min() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
        hi = np.array([x[a:b].max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
        t = edges[:-1] / float(sample_rate)
        ax.fill_between(t, lo, hi, color="#ff4b4b", linewidth=0.4)
        ax.set_xlim(0, n / float(sample_rate))
    peak = float(np.max(np.abs(x))) if n else 0.0
    ax.set_ylim(-max(1e-3, peak) * 1.05, max(1e-3, peak) * 1.05)
    ax.set_xlabel("s")
    ax.grid(alpha=0.25)
    return fig


def spectrogram_db(audio: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Magnitude spectrogram in dB, [freq bins, frames] (Hann window; mono mix)."""
    x = _mono(audio).astype(np.float64)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft)[None, :], axis=1)).T
    return 20.0 * np.log10(np.maximum(spec, 1e-6))


def spectrogram_figure(audio: np.ndarray, sample_rate: int):
    fig, ax = _figure(2.6)
    hop = 256
    db = spectrogram_db(audio, hop=hop)
    top = float(db.max()) if db.size else 0.0
    ax.imshow(
        db,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=top - 80.0,
        vmax=top,
        extent=(0, db.shape[1] * hop / float(sample_rate), 0, sample_rate / 2000.0),
    )
    ax.set_xlabel("s")
    ax.set_ylabel("kHz")
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---- melody uploads ------------------------------------------------------------------------------


def decode_upload(
    name: str,
    data: bytes,
    *,
    max_bytes: int = logic.MAX_UPLOAD_MB * 1024 * 1024,
    max_seconds: float = logic.MAX_MELODY_SECONDS,
    lang: str = "en",
) -> tuple[np.ndarray, int]:
    """An uploaded melody as ([channels, samples] float32, sample_rate); raises UploadError."""
    ext = PurePath(name or "").suffix.lower().lstrip(".")
    if ext not in logic.MELODY_EXTENSIONS:
        raise UploadError(
            t("upload_type", lang, name=name, kinds=", ".join(e.upper() for e in logic.MELODY_EXTENSIONS))
        )
    if len(data) > max_bytes:
        raise UploadError(
            t("upload_large", lang, name=name, size=logic.format_bytes(len(data)), limit=logic.format_bytes(max_bytes))
        )
    if not data:
        raise UploadError(t("upload_empty", lang, name=name))
    try:
        audio, rate = audio_io.read_audio(bytes(data))
    except Exception as exc:  # libsndfile's errors are of several types
        raise UploadError(t("upload_unreadable", lang, name=name, error=exc, ext=ext.upper())) from None
    if audio.shape[-1] == 0:
        raise UploadError(t("upload_silent", lang, name=name))
    seconds = audio.shape[-1] / float(rate)
    if seconds > max_seconds:
        raise UploadError(t("upload_long", lang, name=name, seconds=seconds, limit=max_seconds))
    return audio, int(rate)
