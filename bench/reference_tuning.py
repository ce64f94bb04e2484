"""Is the reference at its best on this machine? An alternating A/B of the transformers decoder step under
environment and thread settings.

    python -m bench.reference_tuning --checkpoint small-random --rounds 8 --steps 20

Each setting is its own worker process (environment variables such as MKL_ENABLE_INSTRUCTIONS act at
library load), holding the checkpoint's decoder with a K/V cache of `--past` positions (CFG: 2 rows).
The parent asks the workers in turn, round after round, for `--steps` decoder forwards each and keeps
every step's time: with other processes on the cores, only the medians of many alternations compare.
One extra worker profiles a step with torch.profiler (top ops by self CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import print_json

ROOT = Path(__file__).resolve().parent.parent

# name -> (environment added, torch threads or None, torch.backends.mkldnn.enabled)
SETTINGS = {
    "default": ({}, None, True),
    "threads_1": ({}, 1, True),
    "mkl_avx2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, None, True),
    "mkl_debug_cpu_type_5": ({"MKL_DEBUG_CPU_TYPE": "5"}, None, True),  # honoured by MKL before 2020.1 only
    "mkldnn_off": ({}, None, False),
    "aten_cpu_default": ({"ATEN_CPU_CAPABILITY": "default"}, None, True),
    "omp_passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None, True),
    # MKL's conditional numerical reproducibility mode (any value, AUTO included): on the Zen 2 EPYC it let
    # MKL run the step's 2-row products on both threads (without it, 2 threads were no faster than 1)
    "mkl_cbwr": ({"MKL_CBWR": "AUTO"}, None, True),
    "mkl_cbwr_omp_passive": ({"MKL_CBWR": "AUTO", "OMP_WAIT_POLICY": "PASSIVE"}, None, True),
}


def _worker(checkpoint: str, past: int, threads: int | None, mkldnn: bool, profile: bool) -> None:
    import gc

    import torch

    from export import checkpoints

    if threads:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    model, _ = checkpoints.load(checkpoints.resolve(checkpoint).path)
    dec, cfg = model.decoder, model.config.decoder
    del model  # the text encoder and codec: not measured here, and several workers share the memory
    gc.collect()
    k = cfg.num_codebooks
    torch.manual_seed(0)
    enc = torch.randn(2, 12, cfg.hidden_size) * 0.1
    with torch.inference_mode():
        cache = dec(
            input_ids=torch.randint(0, cfg.vocab_size, (2 * k, past)), encoder_hidden_states=enc, use_cache=True
        ).past_key_values
        ids = torch.randint(0, cfg.vocab_size, (2 * k, 1))

        def step():
            dec(input_ids=ids, encoder_hidden_states=enc, past_key_values=cache, use_cache=True)

        def rewind():  # back to `past` positions (crop takes the count to remove, negated)
            extra = cache.get_seq_length() - past
            if extra:
                cache.crop(-extra)

        step()
        rewind()
        if profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(5):
                    step()
            rewind()
            rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
            print(
                json.dumps({"profile_ms_per_step": {e.key: e.self_cpu_time_total / 5000.0 for e in rows}}), flush=True
            )
            return
        print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            n = int(line)
            ms = []
            for _ in range(n):
                t = time.perf_counter()
                step()
                ms.append((time.perf_counter() - t) * 1000.0)
            rewind()
            print(json.dumps({"ms": ms}), flush=True)


def _spawn(name: str, checkpoint: str, past: int, profile: bool = False) -> subprocess.Popen:
    env_add, threads, mkldnn = SETTINGS[name]
    cmd = (
        [
            sys.executable,
            "-m",
            "bench.reference_tuning",
            "--worker",
            "--checkpoint",
            checkpoint,
            "--past",
            str(past),
            "--mkldnn",
            str(int(mkldnn)),
        ]
        + (["--threads", str(threads)] if threads else [])
        + (["--profile"] if profile else [])
    )
    return subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **env_add}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def search(
    checkpoint: str, settings: list[str], rounds: int = 8, steps: int = 20, past: int = 250, profile: bool = True
) -> dict:
    """Median decoder-step ms per setting over `rounds` alternations of `steps` steps, each setting's
    ratio to the default's, and the spread (p10-p90 of the per-round medians)."""
    res: dict = {
        "checkpoint": checkpoint,
        "past": past,
        "rounds": rounds,
        "steps_per_round": steps,
        "cpu_count": os.cpu_count(),
    }
    if profile:
        p = _spawn("default", checkpoint, past, profile=True)
        res["profile_default"] = json.loads(p.communicate()[0].strip().splitlines()[-1])["profile_ms_per_step"]
    workers = {}
    for name in settings:  # one after another: each load peaks at the whole checkpoint's memory
        workers[name] = w = _spawn(name, checkpoint, past)
        json.loads(w.stdout.readline())
    rounds_ms: dict = {n: [] for n in settings}
    all_ms: dict = {n: [] for n in settings}
    try:
        for r in range(rounds):
            order = settings if r % 2 == 0 else settings[::-1]  # alternate which goes first
            for name in order:
                w = workers[name]
                w.stdin.write(f"{steps}\n")
                w.stdin.flush()
                ms = json.loads(w.stdout.readline())["ms"]
                rounds_ms[name].append(statistics.median(ms))
                all_ms[name].extend(ms)
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait(timeout=60)
    base = statistics.median(all_ms[settings[0]])
    res["settings"] = {}
    for name in settings:
        med = sorted(rounds_ms[name])
        res["settings"][name] = {
            "env": SETTINGS[name][0],
            "torch_threads": SETTINGS[name][1],
            "mkldnn": SETTINGS[name][2],
            "step_ms_median": statistics.median(all_ms[name]),
            "round_medians_ms": rounds_ms[name],
            "round_median_p10_p90_ms": [med[len(med) // 10], med[min(len(med) - 1, (9 * len(med)) // 10)]],
            "vs_first": statistics.median(all_ms[name]) / base,
        }
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reference_tuning", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="small-random")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--past", type=int, default=250)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mkldnn", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(a.checkpoint, a.past, a.threads, bool(a.mkldnn), a.profile)
        return 0
    print_json(search(a.checkpoint, a.settings, a.rounds, a.steps, a.past, profile=not a.no_profile), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
