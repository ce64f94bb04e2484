"""The greedy oracle: requests run through the runtime (the code the server runs: tokenizer, text
encoder, LM loop with delay pattern and CFG, codec), all batched together, each compared token for
token with transformers' `generate(do_sample=False)` run alone. A variant supplies the runs.

Long-form runs (clips of several windows, musicgen_runtime/long_form.py) are compared with audiocraft's
window loop run on transformers: each window one `generate`, prompted (`decoder_input_ids`) with the
previous window's tail, a melody model conditioned on the chroma of that window's looped melody."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from musicgen_runtime import chroma as chroma_mod, delay, long_form
from musicgen_runtime.lm import GenerationRequest
from musicgen_runtime.validation import GenerationParams

from .parity import PROMPTS, error_stats, hf_decode, hf_greedy_codes
from .signals import synth_melody


@dataclass
class OracleRun:
    prompt: str
    guidance_scale: float = 3.0
    chroma: np.ndarray | None = None  # melody features [Tc, num_chroma]
    label: dict = field(default_factory=dict)  # what the report says about this run
    audio_prompt: tuple | None = None  # (wave [channels, samples], sample_rate): continued
    long_form: tuple | None = None  # (window, stride, new frames): a clip of several windows
    melody_wave: tuple | None = None  # (wave, sample_rate): a long clip's melody, looped per window


def long_form_runs(lm, melody_wave: tuple | None = None, melody_label: str = "") -> list[OracleRun]:
    """Clips of several windows: 2.5 s in 1 s windows with a 0.6 s stride (4 windows), with guidance (and
    `melody_wave`, looped per window); 2 s after an audio prompt (text-only models), without guidance."""
    fr = lm.dims.frame_rate
    plan = (int(1.0 * fr), int(0.6 * fr))
    label = {"long_form": "window 1 s, stride 0.6 s"}
    first = OracleRun(PROMPTS[0], 3.0, long_form=(*plan, int(2.5 * fr)), melody_wave=melody_wave, label=dict(label))
    if melody_wave is not None:
        first.label["melody"] = melody_label
    runs = [first]
    if lm.chroma_config is None:
        prompt = (synth_melody(0.37, lm.dims.sample_rate, 1, seed=8), lm.dims.sample_rate)
        runs.append(
            OracleRun(PROMPTS[1], 1.0, audio_prompt=prompt, long_form=(*plan, int(2.0 * fr)), label=dict(label))
        )
    return runs


@dataclass
class Oracle:
    runs: list[OracleRun]
    checks: Callable[[list], dict] = lambda gens: {}  # extra checks on the finished generations


def text_oracle(lm) -> Oracle:
    """Both prompts, with guidance; continuations of audio prompts (resampled and mixed down by the
    runtime, then the same waveform given to transformers), with and without guidance."""
    sr = lm.dims.sample_rate
    prompts = {
        "stereo 44.1 kHz, 0.5 s": (synth_melody(0.5, 44100, 2, seed=4), 44100),
        f"mono {sr / 1000:g} kHz, 0.37 s": (synth_melody(0.37, sr, 1, seed=5), sr),
    }
    runs = [
        OracleRun(PROMPTS[i % 2], g, audio_prompt=w, label={"audio_prompt": name})
        for i, ((name, w), g) in enumerate(zip(prompts.items(), (3.0, 1.0)))
    ]
    return Oracle([OracleRun(p) for p in PROMPTS] + runs + long_form_runs(lm))


def melody_oracle(lm) -> Oracle:
    """Melodies (looped: shorter than the chroma window; cut: longer) and text only, with and without guidance."""
    cfg, L = lm.chroma_config, lm.chroma_length
    hop_s = cfg.hop_length / cfg.sample_rate
    melodies = {
        "stereo 44.1 kHz, shorter than the chroma window (looped)": (
            synth_melody(max(1.0, 0.5 * L * hop_s), 44100, 2, seed=1),
            44100,
        ),
        "mono 22.05 kHz, longer than the chroma window (truncated)": (
            synth_melody(min(cfg.chunk_length, 1.5 * L * hop_s + 1), 22050, 1, seed=2)[0],
            22050,
        ),
    }
    chromas = {name: chroma_mod.chroma(w, sr, cfg) for name, (w, sr) in melodies.items()}
    looped, cut = list(chromas)

    def run(prompt, mel, g):
        ch = chromas[mel] if mel else None
        return OracleRun(
            prompt, g, ch, {"melody": mel or "none (text only)", "chroma_frames": int(ch.shape[0]) if mel else 0}
        )

    runs = [
        run(PROMPTS[0], looped, 3.0),
        run(PROMPTS[1], cut, 3.0),
        run(PROMPTS[1], None, 3.0),
        run(PROMPTS[0], None, 3.0),
        run(PROMPTS[0], cut, 1.0),
        *long_form_runs(lm, melody_wave=melodies[looped], melody_label=looped),
    ]
    # informative: the conditioning reaches the tokens (same prompt, melody vs text only)
    return Oracle(
        runs, lambda gens: {"melody_changes_codes": bool(not np.array_equal(gens[0].codes(), gens[3].codes()))}
    )


def greedy_oracle(
    oracle: Oracle, lm, tokenizer, encoder, codec, model, hf_tokenizer, steps: int, prompt_encoder=None
) -> dict:
    """Every run batched together in our loop, each alone in transformers; {"runs": [...], "checks": {...}}.
    `prompt_encoder` (audio_prompt.AudioPromptEncoder) encodes the runs' audio prompts (runs with one are
    left out without it)."""
    dims = lm.dims
    frames = steps - _max_delay(lm)
    runs = [r for r in oracle.runs if r.audio_prompt is None or prompt_encoder is not None]
    gens, prompt_waves, t0 = [], [], time.time()
    for r in runs:
        ids, mask = tokenizer.encode([r.prompt])
        params = GenerationParams(duration=1, top_k=1, seed=0, guidance_scale=r.guidance_scale)
        window, stride, new = r.long_form or (lm.max_frames(0), 0, frames)  # a plain run: one window
        prompt_codes, prompt_wave = None, None
        if r.audio_prompt is not None:  # what the server does: check, resample, mix, encode
            prompt_wave = prompt_encoder.prepare(*r.audio_prompt, max_frames=min(window - 1, lm.max_frames(0) - new))
            prompt_codes = prompt_encoder.encode(prompt_wave)
        n = new + (0 if prompt_codes is None else prompt_codes.shape[1])
        request = GenerationRequest(
            encoder(ids, mask)[0], mask[0], params, n, chroma=r.chroma, prompt_codes=prompt_codes
        )
        melody = long_form.LoopedMelody(*r.melody_wave, lm.chroma_config) if r.melody_wave else None
        gens.append(long_form.prepare(lm, request, long_form.WindowConfig(window, stride, dims.frame_rate), melody))
        prompt_waves.append(prompt_wave)
    long_form.run_together(lm, gens)
    ours_s = time.time() - t0
    out = []
    for r, gen, prompt_wave in zip(runs, gens, prompt_waves):
        t1 = time.time()
        if isinstance(gen, long_form.LongGeneration):
            chromas = gen.chromas or [r.chroma] * gen.windows
            ref_codes, ref_wave = hf_window_loop(
                model, hf_tokenizer, r.prompt, r.guidance_scale, gen.plan, dims, chromas, prompt_wave
            )
        else:
            ref_codes, ref_wave = hf_greedy_codes(
                model, hf_tokenizer, r.prompt, steps, r.guidance_scale, r.chroma, audio_prompt=prompt_wave
            )
        our_codes = gen.codes()
        agree = float((our_codes == ref_codes).mean()) if our_codes.shape == ref_codes.shape else 0.0
        entry = {
            "prompt": r.prompt,
            **r.label,
            "guidance_scale": r.guidance_scale,
            "prefix_len": gen.window.prefix_len if isinstance(gen, long_form.LongGeneration) else gen.prefix_len,
            "prompt_frames": gen.prompt_frames,
            "frames": gen.frames,
            "token_agreement": agree,
            "identical": bool(agree == 1.0),
            "hf_seconds": round(time.time() - t1, 2),
        }
        if isinstance(gen, long_form.LongGeneration):
            entry["windows"] = gen.windows
        if gen.error is not None:
            entry["error"] = str(gen.error)
        wave = codec(our_codes[None])[0]  # [channels, samples]
        if wave.shape == ref_wave.shape:
            entry["audio"] = error_stats(wave, ref_wave)
        out.append(entry)
    return {"runs": out, "ours_seconds_all": round(ours_s, 2), "checks": oracle.checks(gens)}


def _max_delay(lm) -> int:
    return int(delay.delays(lm.dims.num_codebooks, lm.dims.audio_channels).max())


def hf_window_loop(model, hf_tokenizer, prompt: str, guidance: float, plan, dims, chromas=None, audio_prompt=None):
    """audiocraft's window loop on transformers, greedy: each window of `plan` (long_form.window_plan) one
    `generate`, the first continuing `audio_prompt` (a waveform at the codec's rate, or None), the later
    ones the previous window's tail; `chromas[i]` window i's melody. Codes [K, frames] and the clip
    decoded by transformers' codec."""
    clip = None
    max_delay = int(delay.delays(dims.num_codebooks, dims.audio_channels).max())
    for i, w in enumerate(plan):
        chroma = None if chromas is None else chromas[i]
        steps = w.frames - w.prompt + max_delay
        if i == 0:  # the first window continues the audio prompt's waveform, as a one-window request
            clip, _ = hf_greedy_codes(model, hf_tokenizer, prompt, steps, guidance, chroma, audio_prompt=audio_prompt)
            continue
        tail = clip[:, w.offset : w.offset + w.prompt]
        codes, _ = hf_greedy_codes(model, hf_tokenizer, prompt, steps, guidance, chroma, prompt_codes=tail)
        clip = np.concatenate([clip, codes[:, clip.shape[1] - w.offset :]], axis=1)
    return clip, hf_decode(model, clip[None])[0]
