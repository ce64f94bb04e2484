"""Melody conditioning input for MusicGen-Melody: audio file -> waveform -> 12-bin chroma. numpy + soundfile only.

Computes exactly what transformers' ``MusicgenMelodyFeatureExtractor`` computes (the reference for the
exported checkpoints), without torch or torchaudio:

1. stereo (or more channels) is averaged to mono;
2. resampled to the model's rate (32 kHz) with torchaudio's windowed-sinc resampler as the feature
   extractor calls it (Hann window, ``lowpass_filter_width=24``, ``rolloff=0.945``): same kernel, same
   polyphase layout, same output length;
3. truncated to ``chunk_length`` seconds (30 s) — longer melodies are cut, shorter ones are NOT padded;
4. zero-padded (centred) to ``n_fft`` samples when shorter than one FFT window;
5. power spectrogram: periodic Hann window of ``n_fft`` = 2^14 samples, hop 4096, centred frames with
   reflect padding, normalised by the window's L2 energy (torchaudio ``Spectrogram(normalized=True)``);
6. librosa-style chroma filter bank (12 bins starting at C, A440, Gaussian octave weighting centred on
   octave 5), inf-norm normalisation per frame (eps 1e-6), then argmax -> one-hot per frame.

The result is ``[frames, 12]`` float32 with ``frames = 1 + samples // 4096`` (235 for 30 s). The model
then loops (tiles) or truncates the chroma frames to its ``chroma_length`` (235): that happens in the
exported ``melody_condition`` graph, as in transformers and audiocraft; ``fit_chroma`` does the same in
numpy for callers that want to see it.

Not done here: the reference implementation (audiocraft) first removes drums and bass with a source
separator (Demucs, keeping vocals + other). Source separation is out of scope: the chroma is taken from
the full mix, as transformers does when it is given a plain waveform.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# torchaudio.functional.resample arguments used by MusicgenMelodyFeatureExtractor
LOWPASS_FILTER_WIDTH = 24
ROLLOFF = 0.945
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
SILENCE_PEAK = 1e-4  # -80 dBFS: a melody whose peak is below this is treated as silence
_MAX_KERNEL_ELEMENTS = 8_000_000  # polyphase table size above which the direct (per-output) resampler is used


class AudioInputError(ValueError):
    """Input audio (a melody, an audio prompt) that cannot be used: unreadable, empty, silent, wrong shape or
    rate; the message names the input."""


MelodyInputError = AudioInputError


@dataclass(frozen=True)
class ChromaConfig:
    """Feature-extractor settings (MusicgenMelodyFeatureExtractor defaults; the export records the checkpoint's)."""

    sample_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    num_chroma: int = 12
    chunk_length: float = 30.0  # seconds of melody used at most

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ChromaConfig":
        fe = (manifest.get("melody") or {}).get("feature_extractor")
        if not fe:
            raise MelodyInputError(
                "this export has no melody feature-extractor settings: it is not a "
                "MusicGen-Melody export (manifest model_type "
                f"{manifest.get('model_type')!r})"
            )
        return cls(**{k: fe[k] for k in ("sample_rate", "n_fft", "hop_length", "num_chroma", "chunk_length")})

    @property
    def max_samples(self) -> int:
        return int(self.chunk_length * self.sample_rate)

    def frames_for(self, samples: int) -> int:
        """Chroma frames for `samples` samples at the model rate (after truncation and n_fft padding)."""
        return 1 + max(min(samples, self.max_samples), self.n_fft) // self.hop_length


# ------------------------------------------------------------------------------------------------
# audio input
# ------------------------------------------------------------------------------------------------


def read_audio(source, max_seconds: float | None = None, what: str = "melody") -> tuple[np.ndarray, int]:
    """(wave float32 [channels, samples], sample_rate) from a file path, raw file bytes or a binary file object.

    WAV, FLAC, OGG/Vorbis, and MP3 where the installed libsndfile supports it (>= 1.1). Only the first
    `max_seconds` (plus a little margin for the resampler) are decoded. Raises MelodyInputError with a
    readable message for missing, empty, unreadable or zero-length audio, naming `what` (the input).
    """
    import soundfile as sf

    label = f"{what} audio"
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = f"{what} file {path.name!r}"
        if not path.is_file():
            raise MelodyInputError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise MelodyInputError(f"{label} is empty (0 bytes)")
        handle = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MelodyInputError(f"{label} is empty (0 bytes)")
        handle = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        handle = source
    else:
        raise MelodyInputError(f"{label} must be a file path, bytes or a file object, not {type(source).__name__}")
    try:
        with sf.SoundFile(handle) as f:
            sr = int(f.samplerate)
            n = f.frames if max_seconds is None else min(f.frames, int((max_seconds + 1.0) * sr))
            data = f.read(frames=n, dtype="float32", always_2d=True)
    except MelodyInputError:
        raise
    except Exception as exc:  # libsndfile: unknown format, truncated file, unsupported codec
        formats = ", ".join(sorted(k for k in ("WAV", "FLAC", "OGG", "MP3") if k in sf.available_formats()))
        raise MelodyInputError(
            f"could not read {label}: {_first_line(exc)}. Supported formats here: {formats} "
            f"(libsndfile {sf.__libsndfile_version__})"
        ) from None
    if data.shape[0] == 0:
        raise MelodyInputError(f"{label} has no audio samples (0 frames)")
    return np.ascontiguousarray(data.T), sr


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def channels_first(wave: np.ndarray, label: str = "melody audio") -> np.ndarray:
    """[samples] or [channels, samples] -> float32 [channels, samples]; [samples, channels] is refused."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise AudioInputError(f"{label} must be [samples] or [channels, samples], got shape {wave.shape}")
    if wave.shape[0] > 16 and wave.shape[1] <= 16:
        raise AudioInputError(f"{label} of shape {wave.shape} looks like [samples, channels]: pass [channels, samples]")
    return wave.astype(np.float32, copy=False)


def to_mono(wave: np.ndarray, label: str = "melody audio") -> np.ndarray:
    """[samples] or [channels, samples] -> float32 [samples] (channel mean, as the feature extractor)."""
    return channels_first(wave, label).mean(axis=0, dtype=np.float32)


def check_wave(
    wave: np.ndarray, sample_rate, label: str = "melody audio", silent_means: str = "it would carry no melody"
) -> None:
    if not isinstance(sample_rate, (int, np.integer)) and not float(sample_rate).is_integer():
        raise AudioInputError(f"{label} sample rate must be a whole number of Hz, got {sample_rate}")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise AudioInputError(
            f"{label} sample rate {sample_rate} Hz is out of range [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]"
        )
    if wave.size == 0:
        raise AudioInputError(f"{label} is empty (0 samples)")
    if not np.all(np.isfinite(wave)):
        raise AudioInputError(f"{label} contains NaN or infinite samples")
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        raise AudioInputError(
            f"{label} is silent (peak {20 * math.log10(max(peak, 1e-12)):.0f} dBFS, "
            f"below {20 * math.log10(SILENCE_PEAK):.0f} dBFS): {silent_means}"
        )


# ------------------------------------------------------------------------------------------------
# resampling (torchaudio's sinc_interp_hann, in numpy)
# ------------------------------------------------------------------------------------------------


def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float):
    """torchaudio's _get_sinc_resample_kernel for a float32 waveform, op for op: [new, 2*width + orig]."""
    f32 = np.float32
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=f32)[None, :] / f32(orig)
    t = np.arange(0, -new, -1, dtype=f32)[:, None] / f32(new) + idx
    t *= f32(base)
    np.clip(t, -lowpass_filter_width, lowpass_filter_width, out=t)
    window = np.cos(t * f32(math.pi) / f32(lowpass_filter_width) / f32(2)) ** 2
    t *= f32(math.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernels = np.where(t == 0, f32(1.0), np.sin(t) / t).astype(f32)
    kernels *= window * f32(base / orig)
    return kernels, width


def resample(
    wave: np.ndarray,
    orig_sr: int,
    new_sr: int,
    lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
    rolloff: float = ROLLOFF,
    max_kernel_elements: int = _MAX_KERNEL_ELEMENTS,
) -> np.ndarray:
    """Band-limited resampling of float32 [..., samples], equal to torchaudio.functional.resample.

    Polyphase: the rates are reduced by their gcd; output sample n = dot(kernel[n % new], the input window
    starting at (n // new) * orig). Output length ceil(new * samples / orig). For rate pairs whose reduced
    polyphase table would be huge (e.g. 44057 -> 32000 Hz), the same filter is evaluated per output sample.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError("sample rates must be positive")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == new_sr:
        return wave
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    shape = wave.shape
    flat = wave.reshape(-1, shape[-1])
    length = flat.shape[-1]
    target = math.ceil(new * length / orig)
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    if new * (2 * width + orig) > max_kernel_elements:
        out = np.stack([_resample_direct(x, orig, new, lowpass_filter_width, rolloff, target) for x in flat])
        return out.reshape(shape[:-1] + (target,))
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff)
    taps = kernel.shape[1]
    kt = np.ascontiguousarray(kernel.T)  # [taps, new]
    outs = []
    for x in flat:
        padded = np.pad(x, (width, width + orig))
        windows = np.lib.stride_tricks.sliding_window_view(padded, taps)[::orig]  # [length // orig + 1, taps]
        chunks = [windows[i : i + 2048] @ kt for i in range(0, windows.shape[0], 2048)]
        outs.append(np.concatenate(chunks).reshape(-1)[:target])
    return np.stack(outs).reshape(shape[:-1] + (target,)).astype(np.float32, copy=False)


def _resample_direct(x, orig: int, new: int, lowpass_filter_width: int, rolloff: float, target: int) -> np.ndarray:
    """The polyphase filter of `resample`, evaluated only on its non-zero taps, per output sample (float64)."""
    base = min(orig, new) * rolloff
    reach = lowpass_filter_width * orig / base  # taps farther than this (in input samples) have zero weight
    n_taps = 2 * math.ceil(reach) + 2
    out = np.empty(target, np.float64)
    padded = np.concatenate([np.zeros(n_taps, np.float32), x, np.zeros(n_taps, np.float32)])
    for start in range(0, target, 4096):
        n = np.arange(start, min(start + 4096, target), dtype=np.int64)
        first = -((reach * new - n * orig) // new).astype(np.int64)  # ceil(n*orig/new - reach)
        s = first[:, None] + np.arange(n_taps)[None, :]  # input indices
        t = (s * new - n[:, None] * orig) / (new * orig) * base  # distance, in units of the filter's zero crossings
        t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
        w = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(t == 0, 1.0, np.sin(math.pi * t) / (math.pi * t)) * w * (base / orig)
        out[n] = np.einsum("ij,ij->i", k, padded[s + n_taps])
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# chroma
# ------------------------------------------------------------------------------------------------


def chroma_filter_bank(sample_rate: int, n_fft: int, num_chroma: int = 12) -> np.ndarray:
    """[num_chroma, n_fft // 2 + 1] filters: transformers.audio_utils.chroma_filter_bank(tuning=0, power=2,
    weighting_parameters=(5, 2), start_at_c_chroma=True), which adapts librosa's chroma filters."""
    frequencies = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    freq_bins = num_chroma * np.log2(frequencies / (440.0 / 16))
    freq_bins = np.concatenate(([freq_bins[0] - 1.5 * num_chroma], freq_bins))
    bins_width = np.concatenate((np.maximum(freq_bins[1:] - freq_bins[:-1], 1.0), [1]))
    filters = np.subtract.outer(freq_bins, np.arange(0, num_chroma, dtype="d")).T
    half = np.round(float(num_chroma) / 2)
    filters = np.remainder(filters + half + 10 * num_chroma, num_chroma) - half
    filters = np.exp(-0.5 * (2 * filters / np.tile(bins_width, (num_chroma, 1))) ** 2)
    filters = filters / np.sum(filters**2, axis=0, keepdims=True) ** 0.5
    filters *= np.tile(np.exp(-0.5 * (((freq_bins / num_chroma - 5.0) / 2.0) ** 2)), (num_chroma, 1))
    filters = np.roll(filters, -3 * (num_chroma // 12), axis=0)
    return np.ascontiguousarray(filters[:, : int(1 + n_fft / 2)])


_FILTERS: dict = {}


def _filters(cfg: ChromaConfig) -> np.ndarray:
    key = (cfg.sample_rate, cfg.n_fft, cfg.num_chroma)
    if key not in _FILTERS:
        _FILTERS[key] = chroma_filter_bank(*key)
    return _FILTERS[key]


def power_spectrogram(x: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """[n_fft // 2 + 1, frames] float64: |STFT|^2 / sum(window^2), periodic Hann, centred, reflect-padded."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    frames = 1 + len(x) // hop_length
    windows = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:frames]
    power = np.empty((n_fft // 2 + 1, frames))
    for i in range(0, frames, 32):
        spec = np.fft.rfft(windows[i : i + 32] * window, axis=-1)
        power[:, i : i + 32] = (spec.real**2 + spec.imag**2).T
    return power / np.sum(window**2)


def chroma(wave, sample_rate: int, config: ChromaConfig = ChromaConfig(), one_hot: bool = True) -> np.ndarray:
    """[frames, num_chroma] float32 chroma of a melody (see the module docstring for every step).

    wave: [samples] mono or [channels, samples], any sample rate in [1 kHz, 384 kHz], float in [-1, 1].
    one_hot=False returns the normalised chroma before the argmax (values in [0, 1]).
    """
    wave = np.asarray(wave)
    if not np.issubdtype(wave.dtype, np.floating):
        raise MelodyInputError(f"melody audio must be floating point samples in [-1, 1], got {wave.dtype}")
    mono = to_mono(wave)
    # resampling is local: cutting the input a little past the window first gives identical output
    keep = int(math.ceil((config.chunk_length + 0.5) * int(sample_rate)))
    mono = mono[:keep]
    check_wave(mono[: int(math.ceil(config.chunk_length * int(sample_rate)))], sample_rate)
    x = resample(mono, int(sample_rate), config.sample_rate)[: config.max_samples]
    if x.shape[-1] < config.n_fft:
        pad = config.n_fft - x.shape[-1]
        x = np.pad(x, (pad // 2, pad // 2 + pad % 2))
    raw = _filters(config) @ power_spectrogram(x, config.n_fft, config.hop_length)  # [C, frames]
    norm = raw / np.maximum(np.abs(raw).max(axis=0, keepdims=True), 1e-6)
    if not one_hot:
        return np.ascontiguousarray(norm.T, dtype=np.float32)
    out = np.zeros((norm.shape[1], config.num_chroma), np.float32)
    out[np.arange(norm.shape[1]), norm.argmax(axis=0)] = 1.0
    return out


def melody_chroma(source, config: ChromaConfig = ChromaConfig(), sample_rate: int | None = None) -> np.ndarray:
    """Chroma from a file path / file bytes / file object, or from a waveform array with `sample_rate`."""
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise MelodyInputError("a melody waveform needs its sample_rate")
        return chroma(source, sample_rate, config)
    wave, sr = read_audio(source, max_seconds=config.chunk_length)
    return chroma(wave, sr, config)


def fit_chroma(features: np.ndarray, frames: int) -> np.ndarray:
    """[T, C] -> [frames, C]: looped (tiled) when shorter, truncated when longer, as the model does."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise MelodyInputError(f"chroma must be [frames >= 1, bins], got shape {features.shape}")
    return features[np.arange(frames) % features.shape[0]]


def null_chroma(frames: int = 1, num_chroma: int = 12) -> np.ndarray:
    """The 'no melody' chroma transformers uses (and the guidance rows): one-hot on bin 0 at every frame."""
    out = np.zeros((frames, num_chroma), np.float32)
    out[:, 0] = 1.0
    return out
