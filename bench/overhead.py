"""Triton's overhead: the same request through the `musicgen` ensemble vs the same engine in-process.

    python -m bench.overhead --repository <staged repo> --duration 5 --pairs 3

Pairs run alternately (in-process, then through Triton) with the same seed; the codes must be equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import print_json


class InProcessEngine:
    """The server's engine in this process: tokenizer, text encoder, the LM (`open_language_model`), codec (one request,
    start to end, as the ensemble runs it). `run()` also keeps the time of every LM step."""

    def __init__(self, repo: Path):
        from musicgen_runtime import manifest, names
        from musicgen_runtime.codec import AudioDecoder
        from musicgen_runtime.text import PromptTokenizer, TextEncoder
        from musicgen_runtime.variants import open_language_model

        repo = Path(repo)
        self.dims = d = manifest.dims(manifest.read(repo / "lm_engine" / "1"))
        self.tok = PromptTokenizer(repo / "tokenizer" / "1" / names.TOKENIZER_FILE, d.max_text_tokens)
        self.enc = TextEncoder(repo / "text_encoder" / "1" / names.TEXT_ENCODER_FILE)
        self.lm = open_language_model(repo / "lm_engine" / "1")
        self.codec = AudioDecoder.from_directory(repo / "audio_decoder" / "1")
        self.step_ms: list[float] = []  # the last run's LM steps

    def run(self, prompt: str, duration: float, seed: int):
        """(audio, codes) of one request; the LM's step times in `step_ms`."""
        from musicgen_runtime import delay
        from musicgen_runtime.lm import GenerationRequest
        from musicgen_runtime.validation import GenerationParams

        stamps = []
        ids, mask = self.tok.encode([prompt])
        hidden = self.enc(ids, mask)[0]
        frames = delay.frames_for_duration(duration, self.dims.frame_rate)
        stamps.append(time.perf_counter())
        codes = self.lm.generate(
            GenerationRequest(
                hidden,
                mask[0],
                GenerationParams(duration=duration, seed=seed),
                frames,
                on_step=lambda _gen: stamps.append(time.perf_counter()),
            )
        )
        self.step_ms = list(np.diff(stamps) * 1000.0)
        return self.codec(codes[None])[0], codes


def measure(repo: Path, duration: float, pairs: int, prompt: str = "lofi hip hop beat") -> dict:
    from client import MusicGenClient
    from server import TritonServer

    engine = InProcessEngine(repo)

    def in_process(seed):
        return engine.run(prompt, duration, seed)

    local, served = [], []
    with TritonServer(repo) as srv, MusicGenClient(srv.grpc_endpoint) as client:
        client.generate(prompt, duration, seed=0)  # warm-up, both sides
        in_process(0)
        for i in range(1, pairs + 1):
            t = time.perf_counter()
            _, codes = in_process(i)
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = client.generate(prompt, duration, seed=i)
            served.append(time.perf_counter() - t)
            if not np.array_equal(result.codes, codes):
                raise RuntimeError("the server's codes differ from the in-process engine's")
    a, b = statistics.median(local), statistics.median(served)
    return {
        "duration": duration,
        "pairs": pairs,
        "in_process_s": local,
        "triton_s": served,
        "in_process_median_s": a,
        "triton_median_s": b,
        "overhead_pct": 100.0 * (b - a) / a,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    ap.add_argument("--repository", type=Path, required=True)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    print_json(measure(args.repository, args.duration, args.pairs), args.out)
    return 0


if __name__ == "__main__":
    from musicgen_runtime.memory import reexec_with_hugepage_malloc

    reexec_with_hugepage_malloc("bench.overhead")  # in-process and served sides: the same malloc setting
    sys.exit(main())
