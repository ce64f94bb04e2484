"""Continuation from an audio prompt: waveform -> the codec's codes (numpy + onnxruntime, no torch).

The prompt is checked (the melody's checks, naming `audio_prompt`), resampled to the codec's rate with
the melody's resampler (chroma.resample, equal to torchaudio's), mixed (mono model) or duplicated
(stereo model) to the model's channels, and encoded by the exported EnCodec encoder graph
(audio_encoder.onnx in lm_engine/1 of a text-only export) into codes [K, frames], frames =
ceil(samples / hop). The LM then continues them (lm.GenerationRequest.prompt_codes): the clip's codes
are the prompt's followed by the new ones, as transformers' `generate(input_values=...)`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import names
from .chroma import AudioInputError, channels_first, check_wave, resample
from .codec import MIN_FRAMES
from .onnx_session import GraphError, open_graph

INPUT = "audio_prompt"  # FP32 [channels, samples]
RATE_INPUT = "audio_prompt_sample_rate"  # INT32 [1], required with it
PROMPT_FRAMES = "prompt_frames"  # INT32 [1] output: where the new part of the clip starts
MAX_CHANNELS = 8


def to_channels(wave: np.ndarray, channels: int) -> np.ndarray:
    """[C, samples] -> [channels, samples]: mono models get the channel mean; stereo models get a mono
    prompt duplicated, a stereo one as is, more channels mixed down to mono then duplicated."""
    if wave.shape[0] == channels:
        return wave
    mono = wave.mean(axis=0, dtype=np.float32, keepdims=True)
    return np.repeat(mono, channels, axis=0)


class AudioPromptEncoder:
    """audio_encoder graph: a prompt waveform at any rate -> codes [K, frames] for the LM to continue."""

    def __init__(self, graph: str | Path, dims, device: str = "cpu", threads: int | None = None):
        self.sess = open_graph(
            graph, device, threads, expect_inputs=[names.INPUT_VALUES], expect_outputs=[names.AUDIO_CODES], spin=False
        )
        self.dims = dims
        channels = self.sess.get_inputs()[0].shape[1]
        if isinstance(channels, int) and channels != dims.audio_channels:
            raise GraphError(f"{Path(graph).name} takes {channels} channels, the model {dims.audio_channels}")

    def frames_for(self, samples: int, sample_rate: int) -> int:
        """Codes a prompt of `samples` samples at `sample_rate` encodes to."""
        resampled = math.ceil(self.dims.sample_rate * samples / int(sample_rate))
        return math.ceil(resampled / self.dims.hop_length)

    def prepare(self, wave, sample_rate, max_frames: int) -> np.ndarray:
        """The checked prompt at the codec's rate and the model's channels, float32 [channels, samples].
        AudioInputError (naming `audio_prompt`) for empty, silent, non-finite, wrong-shaped audio, a rate
        outside the accepted range, or a prompt shorter than the codec's minimum or longer than `max_frames`."""
        wave = channels_first(np.asarray(wave), INPUT)
        if wave.shape[0] > MAX_CHANNELS:
            raise AudioInputError(f"{INPUT} has {wave.shape[0]} channels; at most {MAX_CHANNELS} ([channels, samples])")
        check_wave(wave, sample_rate, INPUT, "there is nothing to continue")
        d, rate = self.dims, int(sample_rate)
        frames = self.frames_for(wave.shape[-1], rate)
        if frames > max_frames:
            raise AudioInputError(
                f"{INPUT} is too long: {wave.shape[-1] / rate:.2f} s; at most "
                f"{max_frames / d.frame_rate:.2f} s fit in a window with the new music"
            )
        wave = to_channels(resample(wave, rate, d.sample_rate), d.audio_channels)
        if wave.shape[-1] < MIN_FRAMES * d.hop_length:
            raise AudioInputError(
                f"{INPUT} is too short: {wave.shape[-1] / d.sample_rate:.3f} s; at least "
                f"{MIN_FRAMES * d.hop_length / d.sample_rate:.2f} s"
            )
        return np.ascontiguousarray(wave)

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """[channels, samples] at the codec's rate (see `prepare`) -> codes int64 [K, frames]."""
        codes = self.sess.run([names.AUDIO_CODES], {names.INPUT_VALUES: np.asarray(wave, np.float32)[None]})[0][0]
        return np.asarray(codes, np.int64)

    def __call__(self, wave, sample_rate, max_frames: int) -> np.ndarray:
        return self.encode(self.prepare(wave, sample_rate, max_frames))
