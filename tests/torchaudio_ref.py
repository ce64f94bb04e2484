"""The two torchaudio functions transformers' MusicgenMelodyFeatureExtractor calls, in plain torch.

torchaudio has no build for the torch this project pins, and the feature extractor imports it. These
are line-for-line copies of torchaudio 2.11's `functional.resample` (sinc_interp_hann) and
`transforms.Spectrogram` (BSD-2-Clause, (c) PyTorch contributors), so the tests can run the REAL
feature extractor from transformers as the oracle for musicgen_runtime.chroma. They were checked
against torchaudio 2.11.0 itself: identical outputs (max abs difference 0.0) for the feature
extractor's arguments.

`feature_extractor()` returns a MusicgenMelodyFeatureExtractor, using real torchaudio when it is
importable and these copies otherwise.
"""

from __future__ import annotations

import math
import types

import torch


def _get_sinc_resample_kernel(
    orig_freq,
    new_freq,
    gcd,
    lowpass_filter_width=6,
    rolloff=0.99,
    resampling_method="sinc_interp_hann",
    beta=None,
    device=torch.device("cpu"),
    dtype=None,
):
    if resampling_method != "sinc_interp_hann":
        raise ValueError("only sinc_interp_hann is copied here")
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    base_freq = min(orig_freq, new_freq)
    base_freq *= rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx_dtype = dtype if dtype is not None else torch.float64
    idx = torch.arange(-width, width + orig_freq, dtype=idx_dtype, device=device)[None, None] / orig_freq
    t = torch.arange(0, -new_freq, -1, dtype=dtype, device=device)[:, None, None] / new_freq + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig_freq
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    if dtype is None:
        kernels = kernels.to(dtype=torch.float32)
    return kernels, width


def _apply_sinc_resample_kernel(waveform, orig_freq, new_freq, gcd, kernel, width):
    orig_freq = int(orig_freq) // gcd
    new_freq = int(new_freq) // gcd
    shape = waveform.size()
    waveform = waveform.view(-1, shape[-1])
    num_wavs, length = waveform.shape
    waveform = torch.nn.functional.pad(waveform, (width, width + orig_freq))
    resampled = torch.nn.functional.conv1d(waveform[:, None], kernel, stride=orig_freq)
    resampled = resampled.transpose(1, 2).reshape(num_wavs, -1)
    target_length = torch.ceil(torch.as_tensor(new_freq * length / orig_freq)).long()
    resampled = resampled[..., :target_length]
    return resampled.view(shape[:-1] + resampled.shape[-1:])


def resample(
    waveform, orig_freq, new_freq, lowpass_filter_width=6, rolloff=0.99, resampling_method="sinc_interp_hann", beta=None
):
    if orig_freq <= 0.0 or new_freq <= 0.0:
        raise ValueError("Original frequency and desired frequecy should be positive")
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(int(orig_freq), int(new_freq))
    kernel, width = _get_sinc_resample_kernel(
        orig_freq,
        new_freq,
        gcd,
        lowpass_filter_width,
        rolloff,
        resampling_method,
        beta,
        waveform.device,
        waveform.dtype,
    )
    return _apply_sinc_resample_kernel(waveform, orig_freq, new_freq, gcd, kernel, width)


class Spectrogram(torch.nn.Module):
    def __init__(
        self,
        n_fft=400,
        win_length=None,
        hop_length=None,
        pad=0,
        window_fn=torch.hann_window,
        power=2.0,
        normalized=False,
        wkwargs=None,
        center=True,
        pad_mode="reflect",
        onesided=True,
        return_complex=None,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        window = window_fn(self.win_length) if wkwargs is None else window_fn(self.win_length, **wkwargs)
        self.register_buffer("window", window)
        self.pad, self.power, self.normalized = pad, power, normalized
        self.center, self.pad_mode, self.onesided = center, pad_mode, onesided

    def forward(self, waveform):
        if self.pad > 0:
            waveform = torch.nn.functional.pad(waveform, (self.pad, self.pad), "constant")
        frame_length_norm = self.normalized == "frame_length"
        window_norm = self.normalized is True or self.normalized == "window"
        shape = waveform.size()
        waveform = waveform.reshape(-1, shape[-1])
        spec_f = torch.stft(
            input=waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=self.center,
            pad_mode=self.pad_mode,
            normalized=frame_length_norm,
            onesided=self.onesided,
            return_complex=True,
        )
        spec_f = spec_f.reshape(shape[:-1] + spec_f.shape[-2:])
        if window_norm:
            spec_f /= self.window.pow(2.0).sum().sqrt()
        if self.power is not None:
            if self.power == 1.0:
                return spec_f.abs()
            return spec_f.abs().pow(self.power)
        return spec_f


def module() -> types.ModuleType:
    """Real torchaudio when importable, else a stand-in module with the copies above."""
    try:
        import torchaudio

        return torchaudio
    except Exception:  # not installed, or its native library does not load with this torch
        ta = types.ModuleType("torchaudio")
        ta.functional = types.SimpleNamespace(resample=resample)
        ta.transforms = types.SimpleNamespace(Spectrogram=Spectrogram)
        ta.__is_reference_copy__ = True
        return ta


def feature_extractor(**kwargs):
    """transformers' MusicgenMelodyFeatureExtractor (its real code), with torchaudio or the copies."""
    import importlib

    fem = importlib.import_module("transformers.models.musicgen_melody.feature_extraction_musicgen_melody")
    fem.torchaudio = module()  # the module binds the name only when transformers finds torchaudio installed
    return fem.MusicgenMelodyFeatureExtractor(**kwargs)
