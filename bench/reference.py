"""The reference: PyTorch `transformers` MusicgenForConditionalGeneration.generate, same checkpoint and parameters.

Run as its own process by the harness (so its threads and memory do not mix with the server's):

    python -m bench.reference --checkpoint small-random --durations 5 10 30 --out ref.json

Measured per duration: wall time of `generate` (text encoder + LM loop + EnCodec decode, as a user
of transformers would call it), the audio seconds it returned, and the time of every decoder
forward call (one per step, CFG rows batched) from a timing wrapper on the decoder instance.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def run(
    checkpoint: str,
    durations: list[float],
    *,
    prompt: str,
    seed: int,
    top_k: int,
    top_p: float,
    temperature: float,
    guidance_scale: float,
    threads: int | None = None,
    mkldnn: bool = True,
    extrapolate_from: float | None = None,
) -> dict:
    """`extrapolate_from`: generate only a clip of that many seconds and extrapolate each duration's wall
    time from it (its wall + the missing steps x the median of its later half's decoder forwards; the
    longer clip's codec time is left out, so the extrapolated reference is if anything fast)."""
    t0 = time.perf_counter()
    import torch

    from export import checkpoints
    from musicgen_runtime import delay

    from .machine import library_environment, torch_build

    if threads:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    resolved = checkpoints.resolve(checkpoint)
    model, tokenizer = checkpoints.load(resolved.path)
    load_s = time.perf_counter() - t0
    cfg = model.config
    k, channels = cfg.decoder.num_codebooks, cfg.decoder.audio_channels
    frame_rate = float(cfg.audio_encoder.frame_rate)
    sr = int(cfg.audio_encoder.sampling_rate)
    inputs = tokenizer([prompt], padding=True, return_tensors="pt")

    step_times: list[float] = []
    forward = model.decoder.forward

    def timed_forward(*a, **kw):
        s = time.perf_counter()
        out = forward(*a, **kw)
        step_times.append(time.perf_counter() - s)
        return out

    model.decoder.forward = timed_forward
    sample_kw = dict(
        do_sample=True, top_k=top_k if top_k > 0 else None, temperature=temperature, guidance_scale=guidance_scale
    )
    sample_kw["top_p"] = top_p if top_p > 0 else 1.0

    def generate(steps: int):
        torch.manual_seed(seed)
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=steps, **sample_kw)

    generate(8)  # warm-up
    runs = []
    for d in [extrapolate_from] if extrapolate_from else durations:
        frames = int(d * frame_rate)
        steps = delay.num_steps(frames, k, channels)
        step_times.clear()
        s = time.perf_counter()
        audio = generate(steps)
        wall = time.perf_counter() - s
        audio_s = audio.shape[-1] / sr
        st = np.array(step_times[1:] or step_times) * 1000.0  # the first call is the BOS/prefill step
        runs.append(
            {
                "duration": d,
                "frames": frames,
                "steps": steps,
                "wall_s": wall,
                "audio_s": audio_s,
                "rtf": wall / audio_s if audio_s else None,
                "steps_per_s": steps / wall,
                "step_ms_median": float(np.median(st)) if st.size else None,
                "step_ms_p90": float(np.percentile(st, 90)) if st.size else None,
                "step_ms_last10pct": float(np.median(st[-max(1, st.size // 10) :])) if st.size else None,
                "step_ms_last_half": float(np.median(st[st.size // 2 :])) if st.size else None,
                "decoder_calls": len(step_times),
            }
        )
    if extrapolate_from:
        runs = [_extrapolate(runs[0], d, delay.num_steps(int(d * frame_rate), k, channels)) for d in durations]
    return {
        "implementation": f"transformers {__import__('transformers').__version__} "
        f"MusicgenForConditionalGeneration.generate (torch {torch.__version__}, eager, fp32)",
        "checkpoint": checkpoint,
        "checkpoint_path": str(resolved.path),
        "random_weights": resolved.random_weights,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": mkldnn,
        "torch_build": torch_build(),
        "environment": library_environment(),
        "load_s": load_s,
        "sample_rate": sr,
        "params": {"prompt": prompt, "seed": seed, **sample_kw},
        "runs": runs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _extrapolate(measured: dict, duration: float, steps: int) -> dict:
    late_ms = measured["step_ms_last_half"]
    wall = measured["wall_s"] + (steps - measured["steps"]) * late_ms / 1000.0
    return {
        "duration": duration,
        "steps": steps,
        "wall_s": wall,
        "audio_s": duration,
        "rtf": wall / duration,
        "steps_per_s": steps / wall,
        "step_ms_median": measured["step_ms_median"],
        "step_ms_p90": measured["step_ms_p90"],
        "extrapolated_from": measured,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--durations", type=float, nargs="+", required=True)
    p.add_argument("--prompt", default="lo-fi hip hop beat with warm piano chords")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    p.add_argument("--extrapolate-from", type=float, help="generate this many seconds only; extrapolate the durations")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    res = run(
        a.checkpoint,
        a.durations,
        prompt=a.prompt,
        seed=a.seed,
        top_k=a.top_k,
        top_p=a.top_p,
        temperature=a.temperature,
        guidance_scale=a.guidance_scale,
        threads=a.threads,
        mkldnn=not a.no_mkldnn,
        extrapolate_from=a.extrapolate_from,
    )
    Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
