"""Audio for the page: encoding for the player and downloads, waveform/spectrogram plots (one row per
channel, the start of the new music marked in a continued clip), melody and audio-prompt uploads.

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
    """An uploaded melody or audio prompt the page cannot use; the message is shown to the user as is."""


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


# ---- plots -------------------------------------------------------------------------------------------

CHANNEL_LABELS = {2: ("L", "R")}  # language-neutral: the plots' fonts may lack CJK glyphs
BOUNDARY_STYLE = dict(color="#1f77b4", linestyle="--", linewidth=1.2)


def _figure(rows: int = 1, height: float = 2.2):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state shared between sessions

    fig = Figure(figsize=(8, height * (1 + 0.6 * (rows - 1))), dpi=100, layout="constrained")
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    return fig, axes


def _channels(audio: np.ndarray) -> np.ndarray:
    """[channels, samples] float32 (a 1-D clip as one channel)."""
    a = np.asarray(audio, dtype=np.float32)
    return a if a.ndim == 2 else a.reshape(1, -1)


def _label_rows(axes, n: int, prompt_seconds: float, unit: str = "") -> None:
    labels = CHANNEL_LABELS.get(n, ())
    for i, ax in enumerate(axes):
        label = " ".join(x for x in (labels[i] if labels else "", unit) if x)
        if label:
            ax.set_ylabel(label)
        if prompt_seconds > 0:  # a continued clip: where the prompt ends and the new music starts
            ax.axvline(prompt_seconds, **BOUNDARY_STYLE)
        if i < len(axes) - 1:
            ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("s")


def waveform_figure(audio: np.ndarray, sample_rate: int, max_points: int = 4000, prompt_seconds: float = 0.0):
    """Min/max envelope of each channel against time (one row per channel, a shared scale)."""
    chans = _channels(audio)
    fig, axes = _figure(len(chans))
    n = chans.shape[-1]
    peak = float(np.max(np.abs(chans))) if n else 0.0
    for ax, x in zip(axes, chans):
        if n:
            bins = max(1, min(max_points, n))
            edges = np.linspace(0, n, bins + 1).astype(int)
            lo = np.array([x[a:b].min() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
            hi = np.array([x[a:b].max() if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
            ax.fill_between(edges[:-1] / float(sample_rate), lo, hi, color="#ff4b4b", linewidth=0.4)
            ax.set_xlim(0, n / float(sample_rate))
        ax.set_ylim(-max(1e-3, peak) * 1.05, max(1e-3, peak) * 1.05)
        ax.grid(alpha=0.25)
    _label_rows(axes, len(chans), prompt_seconds)
    return fig


def spectrogram_db(audio: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Magnitude spectrogram in dB, [freq bins, frames] (Hann window) of a 1-D signal (or a clip's mono mix)."""
    a = np.asarray(audio, dtype=np.float64)
    x = a.mean(axis=0) if a.ndim == 2 else a.reshape(-1)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft)[None, :], axis=1)).T
    return 20.0 * np.log10(np.maximum(spec, 1e-6))


def spectrogram_figure(audio: np.ndarray, sample_rate: int, prompt_seconds: float = 0.0):
    """One spectrogram per channel, on one colour scale."""
    chans = _channels(audio)
    fig, axes = _figure(len(chans), 2.6)
    hop = 256
    dbs = [spectrogram_db(x, hop=hop) for x in chans]
    top = max(float(db.max()) for db in dbs) if dbs else 0.0
    for ax, db in zip(axes, dbs):
        ax.imshow(
            db,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=top - 80.0,
            vmax=top,
            extent=(0, db.shape[1] * hop / float(sample_rate), 0, sample_rate / 2000.0),
        )
    _label_rows(axes, len(chans), prompt_seconds, "kHz")
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---- melody and audio-prompt uploads ---------------------------------------------------------------


def decode_upload(
    name: str,
    data: bytes,
    *,
    max_bytes: int = logic.MAX_UPLOAD_MB * 1024 * 1024,
    max_seconds: float = logic.MAX_MELODY_SECONDS,
    lang: str = "en",
) -> tuple[np.ndarray, int]:
    """An uploaded melody (or audio prompt) as ([channels, samples] float32, sample_rate); raises UploadError."""
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
    if not np.isfinite(audio).all() or not np.any(audio):
        raise UploadError(t("upload_quiet", lang, name=name))
    seconds = audio.shape[-1] / float(rate)
    if seconds > max_seconds:
        raise UploadError(t("upload_long", lang, name=name, seconds=seconds, limit=max_seconds))
    return audio, int(rate)


def decode_audio_prompt(
    name: str, data: bytes, window_seconds: float, *, lang: str = "en", **limits
) -> tuple[np.ndarray, int]:
    """An uploaded audio prompt to continue with `duration` s of new music, as ([channels, samples]
    float32, sample_rate); UploadError when the file is unusable or not shorter than the server's window
    (`limits`: decode_upload's max_bytes)."""
    audio, rate = decode_upload(name, data, max_seconds=float("inf"), lang=lang, **limits)
    try:
        logic.check_continuation(audio.shape[-1] / float(rate), window_seconds, lang)
    except logic.ValidationError as exc:
        raise UploadError(str(exc)) from None
    return audio, rate
