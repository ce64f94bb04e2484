"""The benchmark: our Triton server (through the client) against PyTorch `transformers`, one run, one machine.

    python -m bench                        # small-random (musicgen-small shapes), full
    python -m bench --short                # small-random int8, the same ratios in about 5 minutes
    python -m bench --quick                # tiny-random smoke run (CI)
    python -m bench --checkpoint /path/to/musicgen-small --precision fp16 --out bench/results/real

Phases (never two at once, so they do not share the cores):
  1. export into a bench repository (reused when it already holds this checkpoint/precision);
  2. memory bandwidth (numpy, an onnxruntime MatMul, AVX2 loads on 2 MB pages) and the per-step decode time in-process (`LanguageModel.step()`),
     with its floor = bytes a step reads (weights, KV cache) / measured read bandwidth; the LM alone
     generating 1 and (top concurrency) clips together, and one codec decode: the batching ceiling
     of this machine before any server work (measure.batch_scaling); and where a step's time goes
     at mid-clip for 1 and that many requests, by ORT's node profiler (measure.step_profile);
  3. the reference: `transformers` generate in a subprocess, same checkpoint and parameters;
  4. our server (real tritonserver): client-seen wall time and real-time factor per duration, unary
     and streamed (time to first audio chunk), latency p50/p95 and throughput at each concurrency,
     peak RSS/PSS of the server's process tree, and perf_analyzer's Triton-level numbers.
Writes results.json, rtf.csv, concurrency.csv, steps.csv, *.png into --out and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .reference_tuning import SETTINGS as REFERENCE_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
WORK = ROOT / ".work" / "bench"
PROMPT = "lo-fi hip hop beat with warm piano chords"
SEED = 1234
# What the A/B of the reference's settings (bench/reference_tuning.py) found where it was run, recorded in
# results.json by the runs that do not search (short, quick); the full run searches on its own machine.
REFERENCE_TUNING_NOTE = (
    "AMD EPYC (family 23 model 49, KVM, 2 vCPUs), small-random decoder step at 250 past positions, 6 "
    "alternating rounds of 10 steps: MKL_CBWR=AUTO 113 ms against 194 ms by default (0.58x), 125 ms with "
    "OMP_WAIT_POLICY=PASSIVE too; every other setting (1 thread, MKL_ENABLE_INSTRUCTIONS=AVX2, "
    "MKL_DEBUG_CPU_TYPE=5, oneDNN off, ATEN_CPU_CAPABILITY=default, OMP_WAIT_POLICY=PASSIVE alone) 189-203 ms. "
    "With MKL_CBWR set (AUTO, AVX and AVX2 alike: 115-121 ms) 2 threads took the step from 196 ms (1 thread) "
    "to 117; without it 2 threads were no faster than 1, the products (aten::mm, 154 of 194 ms) reading the "
    "weights at ~9 GB/s. An earlier search on the same CPU kind found torch's spin-waiting OpenMP threads "
    "slowed many times over when other processes shared the cores; the bench's phases do not share them. "
    "The short run uses mkl_cbwr."
)


@dataclass
class Config:
    checkpoint: str = "small-random"
    precision: str = "fp32"
    durations: list = field(default_factory=lambda: [5.0, 10.0, 30.0])
    concurrency: list = field(default_factory=lambda: [1, 2, 4, 8])
    concurrency_duration: float = 5.0
    requests_per_level: int = 0  # 0: `waves` waves (waves x concurrency), at least 2
    waves: int = 2
    step_duration: float = 5.0  # audio seconds for the in-process decode step timing
    step_clips: int = 3
    profile_top: bool = True  # profile a step at the top concurrency too
    bandwidth_mb: int = 512
    reference: bool = True
    reference_extrapolate_from: float | None = None  # generate this clip only, extrapolate the durations
    reference_setting: str | None = None  # a bench.reference_tuning setting the reference runs with
    tune_reference: bool = True  # search the settings first (A/B), run the reference with a clear winner
    pairs: int = 2  # in-process / unary / streamed requests per duration, alternated
    long_clip: float = 120.0  # seconds of one streamed long clip (windows: long form); 0 = skip
    perf_analyzer: bool = True
    perf_duration: float = 1.0
    repository: Path | None = None
    out: Path = DEFAULT_OUT
    quick: bool = False
    short: bool = False
    prompt: str = PROMPT
    seed: int = SEED

    @classmethod
    def quick_defaults(cls, **kw) -> "Config":
        """The CI smoke run: tiny-random, framework overheads only (not the model's speed)."""
        base = dict(
            checkpoint="tiny-random",
            durations=[1.0, 2.0],
            concurrency=[1, 2, 4],
            concurrency_duration=1.0,
            step_duration=1.0,
            bandwidth_mb=128,
            perf_analyzer=False,
            perf_duration=0.5,
            quick=True,
            long_clip=40.0,
            pairs=1,
            tune_reference=False,
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    @classmethod
    def short_defaults(cls, **kw) -> "Config":
        """The regression guard: small-random int8, the full run's ratios in about 5 minutes on a quiet
        2-core machine (one wave per concurrency level, one pair per duration, 3 s clips for batching,
        the reference timed on a 2 s clip and extrapolated, under MKL_CBWR=AUTO, its fastest setting where
        it was searched: see REFERENCE_TUNING_NOTE)."""
        base = dict(
            precision="int8",
            durations=[5.0, 10.0],
            concurrency=[1, 8],
            concurrency_duration=3.0,
            waves=1,
            step_clips=2,
            profile_top=False,
            bandwidth_mb=256,
            perf_analyzer=False,
            pairs=1,
            reference_extrapolate_from=2.0,
            tune_reference=False,
            reference_setting="mkl_cbwr",
            long_clip=0.0,
            short=True,
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------------


def stage_repository(dst: Path, checkpoint: str, precision: str) -> Path:
    """The tests' procedure: model_repository/ configs and code (no weights) + `export.build.build`.

    Configs are refreshed every time; the export is skipped when dst already holds this checkpoint
    at this precision with intact files.
    """
    from export.repository import copy_model_repository  # torch-free

    copy_model_repository(dst)
    # `export.build.build` in its own process: torch and the checkpoint (GBs) leave with it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "build",
            "--checkpoint",
            checkpoint,
            "--precision",
            precision,
            "--repository",
            str(dst),
            "--skip-if-current",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"export of {checkpoint} ({precision}) failed: {tail}")
    return dst


def run_reference(cfg: Config, out: Path, setting: str | None = None) -> dict:
    """`transformers` generate in its own process, under `setting` (a bench.reference_tuning setting:
    environment variables, torch threads, oneDNN on or off) when given."""
    from .reference_tuning import SETTINGS

    path = out / "reference.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.reference",
        "--checkpoint",
        cfg.checkpoint,
        "--durations",
        *[str(d) for d in cfg.durations],
        "--prompt",
        cfg.prompt,
        "--seed",
        str(cfg.seed),
        "--out",
        str(path),
    ]
    if cfg.reference_extrapolate_from:
        cmd += ["--extrapolate-from", str(cfg.reference_extrapolate_from)]
    env_add, threads, mkldnn = SETTINGS[setting or "default"]
    cmd += (["--threads", str(threads)] if threads else []) + ([] if mkldnn else ["--no-mkldnn"])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env_add})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": "reference run failed: " + " | ".join(tail)}
    res = json.loads(path.read_text())
    res["process_s"] = time.perf_counter() - t0
    res["setting"] = setting or "default"
    res["extrapolated"] = bool(cfg.reference_extrapolate_from)
    return res


def tune_reference(cfg: Config) -> dict:
    """The reference at its best on this machine: an alternating A/B of its decoder step under each
    bench.reference_tuning setting. `chosen` is the fastest setting when it is clearly faster than the
    default (median of all its steps at most 0.9x the default's, and faster in at least two thirds of
    the rounds, each round's settings having run back to back), else "default"."""
    from .reference_tuning import SETTINGS, search

    res = search(cfg.checkpoint, list(SETTINGS), rounds=6, steps=10)
    res["chosen"] = clear_winner(res["settings"])
    return res


def clear_winner(settings: dict, base: str = "default") -> str:
    """See tune_reference: the setting to run the reference with, from search()'s per-setting results."""
    best = min(settings, key=lambda n: settings[n]["step_ms_median"])
    if best == base:
        return base
    b, d = settings[best], settings[base]
    wins = sum(x < y for x, y in zip(b["round_medians_ms"], d["round_medians_ms"]))
    clear = b["step_ms_median"] <= 0.9 * d["step_ms_median"] and 3 * wins >= 2 * len(d["round_medians_ms"])
    return best if clear else base


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def _lm_dims(model_dir: Path):
    from musicgen_runtime import manifest

    return manifest.dims(manifest.read(model_dir))


def _step_lines(path: Path) -> list[tuple[int, float]]:
    """(rows, ms) of every engine step logged so far."""
    if not path.exists():
        return []
    return [(int(r), float(ms)) for r, ms in (ln.split() for ln in path.read_text().splitlines() if ln.strip())]


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _served_vs_in_process(cfg: Config, duration: float, engine, client, server_pid: int, step_log: Path) -> dict:
    """One duration: `cfg.pairs` rounds of the same request (same seed) in-process, unary and streamed
    through the server, in turn. Wall times, the medians' ratios, where the CPU time went (this process
    for in-process and the client; each server process by model for served) and the LM step times in
    the engine (in-process, and inside the server from its step log)."""
    from .procmem import cpu_delta, tree_cpu

    walls: dict = {"in_process": [], "unary": [], "stream": []}
    step_ms: dict = {"in_process": [], "unary": [], "stream": []}
    cpu: dict = {}
    row: dict = {"duration": duration}
    for i in range(cfg.pairs):
        log(f"server: {duration:g} s, pair {i + 1}/{cfg.pairs}: in-process, unary, streamed (gRPC)")
        c0 = _self_cpu_s()
        t = time.perf_counter()
        _, codes_local = engine.run(cfg.prompt, duration, cfg.seed)
        walls["in_process"].append(time.perf_counter() - t)
        cpu["in_process"] = {"harness (in-process engine)": round(_self_cpu_s() - c0, 3)}
        step_ms["in_process"] += engine.step_ms[1:]
        for kind in ("unary", "stream"):
            events: list = []
            n0, c0, tree0 = len(_step_lines(step_log)), _self_cpu_s(), tree_cpu(server_pid)
            r = client.generate(
                cfg.prompt,
                duration,
                seed=cfg.seed,
                stream=kind == "stream",
                on_event=events.append if kind == "stream" else None,
            )
            cpu[kind] = {"client": round(_self_cpu_s() - c0, 3), **cpu_delta(tree0, tree_cpu(server_pid))}
            step_ms[kind] += [ms for _, ms in _step_lines(step_log)[n0:]][1:]
            walls[kind].append(r.elapsed)
            if kind == "unary":
                unary = r
                row.update(
                    {
                        "audio_s": r.duration,
                        "frames": int(r.codes.shape[-1]),
                        "served_codes_equal_in_process": bool(np.array_equal(r.codes, codes_local)),
                    }
                )
            else:
                row.update(
                    {
                        "time_to_first_chunk_s": r.time_to_first_chunk,
                        "time_to_first_event_s": events[0].elapsed if events else None,
                        "stream_codes_equal_unary": bool(np.array_equal(unary.codes, r.codes)),
                        # the streamed audio is its chunks (windowed decodes); unary is one decode
                        "stream_audio_max_abs_diff": float(np.abs(unary.audio - r.audio).max())
                        if unary.audio.shape == r.audio.shape
                        else None,
                    }
                )
    med = {k: float(np.median(v)) for k, v in walls.items()}
    audio_s = row["audio_s"]
    row.update(
        {
            "wall_s": med["unary"],
            "rtf": med["unary"] / audio_s,
            "stream_wall_s": med["stream"],
            "stream_rtf": med["stream"] / audio_s,
            "in_process_s": med["in_process"],
            "walls_s": walls,
            "served_over_in_process": _ratio(med["unary"], med["in_process"]),
            "stream_over_in_process": _ratio(med["stream"], med["in_process"]),
            "cpu_s_last_pair": cpu,
            "engine_step_ms_median": {k: float(np.median(v)) if v else None for k, v in step_ms.items()},
        }
    )
    return row


def _streamed_long_clip(cfg: Config, client, single: list) -> dict:
    """One streamed clip of `cfg.long_clip` s (several windows): its RTF, and its first chunk's time
    against the shortest streamed clip's (the windows must not delay the first sound)."""
    log(f"server: one streamed {cfg.long_clip:g} s clip (long form)")
    s = time.perf_counter()
    r = client.generate(cfg.prompt, cfg.long_clip, seed=cfg.seed, stream=True)
    wall = time.perf_counter() - s
    short = min(single, key=lambda x: x["duration"]) if single else {}
    first = r.time_to_first_chunk
    return {
        "duration": r.duration,
        "wall_s": wall,
        "stream_rtf": wall / r.duration,
        "time_to_first_chunk_s": first,
        "short_clip_s": short.get("duration"),
        "short_clip_first_chunk_s": short.get("time_to_first_chunk_s"),
        "first_chunk_over_short_clip": _ratio(first, short.get("time_to_first_chunk_s")),
    }


def run_server_phase(cfg: Config, repo: Path, out: Path) -> dict:
    res: dict = {}
    try:
        _server_phase(cfg, repo, out, res)
    except Exception as exc:  # a crashed or failing server: keep what was measured, say what happened
        res["error"] = f"{type(exc).__name__}: {exc}"
        log_path = out / "tritonserver.log"
        if log_path.exists():
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if not ln.startswith("I")]
            res["server_log_tail"] = lines[-40:]
    return res


def _server_phase(cfg: Config, repo: Path, out: Path, res: dict) -> None:
    from client import MusicGenClient
    from musicgen_runtime.scheduler import STEP_TIMES_ENV
    from server import TritonServer

    from . import perf_analyzer as pa
    from .overhead import InProcessEngine
    from .procmem import PeakSampler, tree_memory

    log("in-process engine (tokenizer, text encoder, LM, codec): load and warm up")
    engine = InProcessEngine(repo)
    engine.run("warm up", 0.5, seed=0)
    step_log = (
        out.resolve() / "engine_steps.txt"
    )  # the engine's step times inside the server (scheduler.STEP_TIMES_ENV)
    step_log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with TritonServer(repo, log_path=out / "tritonserver.log", env={STEP_TIMES_ENV: str(step_log)}) as srv:
        res["start_to_ready_s"] = time.perf_counter() - t0
        res["idle_memory"] = tree_memory(srv.pid)
        grpc = MusicGenClient(srv.grpc_endpoint, "grpc", timeout=1800)
        http = MusicGenClient(srv.http_endpoint, "http", timeout=1800)
        mem = PeakSampler(srv.pid)
        res["memory"] = {"peak": mem.peak, "phases": mem.phases}  # filled in place while sampling
        with mem, grpc, http:
            manifest = grpc.info()
            res["manifest"] = {k: manifest.get(k) for k in ("source", "precision", "random_weights", "dims")}
            mem.mark("warmup")
            grpc.generate("warm up", 0.5, seed=0)
            list(grpc.stream("warm up", 0.5, seed=0))
            http.generate("warm up", 0.5, seed=0)

            # Triton + client overhead: the trivial musicgen_info model
            overhead = {}
            for name, c in (("grpc", grpc), ("http", http)):
                lat = []
                for _ in range(30):
                    s = time.perf_counter()
                    c.info()
                    lat.append((time.perf_counter() - s) * 1000)
                overhead[name] = {"p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95)}
            res["info_call_ms"] = overhead

            mem.mark("single")
            res["single"] = [_served_vs_in_process(cfg, d, engine, grpc, srv.pid, step_log) for d in cfg.durations]

            levels = res["concurrency"] = []
            for c in cfg.concurrency:
                n = cfg.requests_per_level or max(2, cfg.waves * c)
                log(f"server: concurrency {c}, {n} requests of {cfg.concurrency_duration:g} s")
                mem.mark(f"concurrency_{c}")

                def one(i):
                    s = time.perf_counter()
                    r = grpc.generate(cfg.prompt, cfg.concurrency_duration, seed=cfg.seed + i)
                    return time.perf_counter() - s, r.duration

                s = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    done = list(pool.map(one, range(n)))
                wall = time.perf_counter() - s
                lat = [x[0] for x in done]
                audio = sum(x[1] for x in done)
                levels.append(
                    {
                        "concurrency": c,
                        "requests": n,
                        "clip_s": cfg.concurrency_duration,
                        "wall_s": wall,
                        "latency_p50_s": _pct(lat, 50),
                        "latency_p95_s": _pct(lat, 95),
                        "latency_max_s": max(lat),
                        "throughput_audio_s_per_s": audio / wall,
                        "requests_per_s": n / wall,
                        "peak_rss_mb": mem.phases[f"concurrency_{c}"]["rss_mb"],
                        "peak_pss_mb": mem.phases[f"concurrency_{c}"]["pss_mb"],
                    }
                )

            if cfg.perf_analyzer:
                mem.mark("perf_analyzer")
                log("perf_analyzer: musicgen_info (Triton overhead) and musicgen")
                try:
                    data = pa.input_data(out / "perf_analyzer_input.json", cfg.prompt, cfg.perf_duration, cfg.seed)
                    top = max(c for c in cfg.concurrency if c <= 4)
                    res["perf_analyzer"] = {
                        "musicgen_info": pa.run(srv.grpc_endpoint, "musicgen_info", out, request_count=50),
                        "musicgen": pa.run(
                            srv.grpc_endpoint,
                            "musicgen",
                            out,
                            data=data,
                            concurrency=f"1:{top}",
                            request_count=4 if not cfg.quick else 10,
                        ),
                        "musicgen_clip_s": cfg.perf_duration,
                    }
                except pa.PerfAnalyzerUnavailable as exc:
                    res["perf_analyzer"] = {"error": str(exc)}
            else:
                res["perf_analyzer"] = {
                    "skipped": ("quick mode" if cfg.quick else "--no-perf-analyzer")
                    + " (pass --perf-analyzer to run it)"
                }

            if cfg.long_clip:  # last: a window's prompt prefill can stall the engine long enough for a restart
                mem.mark("long_clip")
                try:
                    res["long_clip"] = _streamed_long_clip(cfg, grpc, res["single"])
                except Exception as exc:
                    res["long_clip_error"] = f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def summarize(results: dict) -> dict:
    """Our/reference ratios (lower is better for times)."""
    ref = {r["duration"]: r for r in results.get("reference", {}).get("runs", [])}
    srv = {r["duration"]: r for r in results.get("server", {}).get("single", [])}
    out = {"rtf": []}
    for d, r in srv.items():
        rr = ref.get(d, {})
        out["rtf"].append(
            {
                "duration": d,
                "ours": r["rtf"],
                "ours_stream": r["stream_rtf"],
                "reference": rr.get("rtf"),
                "ours_over_reference": _ratio(r["rtf"], rr.get("rtf")),
                "speedup": _ratio(rr.get("rtf"), r["rtf"]),
            }
        )
    steps = results.get("steps", {})
    ref_runs = results.get("reference", {}).get("runs", [])
    ref_step = ref_runs[-1].get("step_ms_median") if ref_runs else None
    out["step_ms"] = {
        "ours": steps.get("step_ms_median"),
        "reference": ref_step,
        "floor": steps.get("floor_ms"),
        "ours_over_reference": _ratio(steps.get("step_ms_median"), ref_step),
        "ours_over_floor": _ratio(steps.get("step_ms_median"), steps.get("floor_ms")),
    }
    levels = results.get("server", {}).get("concurrency", [])
    one = next((c for c in levels if c["concurrency"] == 1), None)
    bs = results.get("batch_scaling") or {}
    if one and len(levels) > 1:  # top concurrency's throughput over one request's, and the in-process ceilings
        top = max(levels, key=lambda c: c["concurrency"])
        out["batching"] = {
            "concurrency": top["concurrency"],
            "server": _ratio(top["throughput_audio_s_per_s"], one["throughput_audio_s_per_s"]),
            "lm_only_in_process": bs.get("lm_only_ratio"),
            "bound_with_codec_in_process": bs.get("bound_with_codec"),
        }
    return out


def ratios(results: dict, summary: dict) -> dict:
    """The regression guard's figures (results.json `ratios`), each against its target in the issue:
    ours/reference wall time for a 10 s clip (and its inverse, the speed-up), the one-request step over
    its floor, served over the same engine in-process (unary and streamed, per clip length), the top
    concurrency's throughput gain over the in-process bound with the codec, and the streamed RTF."""
    rtf = {r["duration"]: r for r in summary["rtf"]}
    ref = results.get("reference") or {}
    at10 = rtf.get(10.0, {})
    single = {r["duration"]: r for r in results.get("server", {}).get("single", [])}
    out = {
        "machine": results.get("machine", {}).get("label"),
        "ours_vs_reference_10s": at10.get("ours_over_reference"),
        "speedup_vs_reference_10s": at10.get("speedup"),
        "reference_setting": ref.get("setting"),
        "reference_extrapolated": ref.get("extrapolated"),
        "step_over_floor": summary["step_ms"]["ours_over_floor"],
        "served_over_inprocess": {},
        "streamed_rtf": {},
    }
    for d, r in single.items():
        out["served_over_inprocess"][f"unary_{d:g}s"] = r.get("served_over_in_process")
        out["served_over_inprocess"][f"streamed_{d:g}s"] = r.get("stream_over_in_process")
        out["streamed_rtf"][f"{d:g}s"] = r.get("stream_rtf")
    long = results.get("server", {}).get("long_clip")
    if long:
        out["long_clip"] = {
            "streamed_rtf": long["stream_rtf"],
            "first_chunk_s": long["time_to_first_chunk_s"],
            "first_chunk_over_short_clip": long["first_chunk_over_short_clip"],
        }
    b = summary.get("batching")
    if b:
        out[f"concurrency{b['concurrency']}_over_bound"] = _ratio(b["server"], b.get("bound_with_codec_in_process"))
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(results: dict) -> str:
    s = results["summary"]
    m = results["machine"]
    ref = results.get("reference", {})
    torch_line = "; ".join((m.get("torch") or {}).get("build", [])[:3]) or "not recorded (no reference run)"
    ort = (m.get("onnxruntime") or {}).get("version")
    how = " (extrapolated from a shorter clip)" if ref.get("extrapolated") else ""
    load = "/".join(f"{x:.1f}" for x in results.get("load_average_at_start", []))
    lines = [
        f"machine: {m.get('label') or m.get('cpu_model')}; onnxruntime {ort}; load at start {load}",
        f"torch (reference): {torch_line}",
        f"reference setting: {ref.get('setting', '-')}{how}",
        f"checkpoint {results['config']['checkpoint']} ({results['config']['precision']}); times are wall "
        + "seconds; RTF = wall s per audio s (lower is better)",
        f"{'metric':<40}{'ours':>12}{'reference':>12}{'ours/ref':>10}",
    ]
    for r in s["rtf"]:
        lines.append(
            f"{'RTF ' + _fmt(r['duration']) + ' s (unary; stream ' + _fmt(r['ours_stream']) + ')':<40}"
            f"{_fmt(r['ours']):>12}{_fmt(r['reference']):>12}{_fmt(r['ours_over_reference']):>10}"
        )
    st = s["step_ms"]
    lines.append(
        f"{'decode step ms (median, 1 request)':<40}{_fmt(st['ours']):>12}{_fmt(st['reference']):>12}"
        f"{_fmt(st['ours_over_reference']):>10}"
    )
    lines.append(f"{'  floor ms (bytes read / bandwidth)':<40}{_fmt(st['floor']):>12}")
    sampling = results.get("steps", {}).get("sampling")
    if sampling:
        lines.append(
            f"{'  guidance + top-k sampling ms / request':<40}{_fmt(sampling['us_per_request_step'] / 1000):>12}"
        )
    if results.get("steps", {}).get("read_gbps_source"):
        lines.append(
            f"{'    read GB/s: ' + results['steps']['read_gbps_source']:<40}"
            f"{_fmt(results['steps']['read_gbps_used']):>12}"
        )
    for sp in results.get("step_profile", []):  # profiled: the shares matter, the profiler adds its own cost
        lines.append(
            f"{'  profiled, ' + str(sp['requests']) + ' req: MatMuls ms (GB/s)':<40}"
            f"{_fmt(sp['weights_ms']) + ' (' + _fmt(sp['weights_gbps']) + ')':>12}"
        )
        lines.append(
            f"{'    self-attn / cross-attn / other ms':<40}"
            f"{'/'.join(_fmt(sp[k], 2) for k in ('self_attention_ms', 'cross_attention_ms', 'other_ms')):>12}"
        )
    srv = results.get("server", {})
    ref_runs = {r["duration"]: r for r in results.get("reference", {}).get("runs", [])}
    for r in srv.get("single", []):
        ref_wall = ref_runs.get(r["duration"], {}).get("wall_s")  # generate returns all audio at the end
        lines.append(
            f"{'first audio s, ' + _fmt(r['duration']) + ' s clip (ours: 1st chunk)':<40}"
            f"{_fmt(r['time_to_first_chunk_s']):>12}{_fmt(ref_wall):>12}"
            f"{_fmt(_ratio(r['time_to_first_chunk_s'], ref_wall)):>10}"
        )
    if srv.get("long_clip_error"):
        lines.append(f"{'streamed long clip':<40}failed: {srv['long_clip_error']}")
    long = srv.get("long_clip")
    if long:  # long form: RTF of the whole clip; its first chunk against the shortest clip's
        lines.append(
            f"{'streamed ' + _fmt(long['duration']) + ' s clip (windows): RTF, 1st chunk s':<40}"
            f"{_fmt(long['stream_rtf']) + ', ' + _fmt(long['time_to_first_chunk_s']):>12}"
            f"{'(' + _fmt(long['short_clip_s']) + ' s clip: ' + _fmt(long['short_clip_first_chunk_s']) + ' s)':>22}"
        )
    for r in srv.get("single", []):  # the server against the same engine in this process
        d = _fmt(r["duration"])
        lines.append(
            f"{'served / in-process, ' + d + ' s: unary, stream':<40}"
            f"{_fmt(r.get('served_over_in_process')) + ', ' + _fmt(r.get('stream_over_in_process')):>12}"
            f"{'(in-process ' + _fmt(r.get('in_process_s')) + ' s)':>22}"
        )
        st = r.get("engine_step_ms_median") or {}
        lines.append(
            f"{'  LM step ms: in-process/unary/stream':<40}"
            f"{'/'.join(_fmt(st.get(k)) for k in ('in_process', 'unary', 'stream')):>12}"
        )
    diffs = [r.get("stream_audio_max_abs_diff") for r in srv.get("single", [])]
    if any(d is not None for d in diffs):
        lines.append(f"{'streamed vs unary audio, max abs diff':<40}{max(d for d in diffs if d is not None):>12.2g}")
    lines.append(f"{'concurrency c: latency p50/p95 s':<40}{'ours':>12}{'':>12}")
    for c in srv.get("concurrency", []):
        lines.append(
            f"{'  c=' + str(c['concurrency']) + ' (' + _fmt(c['clip_s']) + ' s clips)':<40}"
            f"{_fmt(c['latency_p50_s']) + '/' + _fmt(c['latency_p95_s']):>12}"
        )
    for c in srv.get("concurrency", []):
        rr = ref_runs.get(c["clip_s"], {})
        serial = 1.0 / rr["rtf"] if rr.get("rtf") else None  # generate serves one request at a time
        lines.append(
            f"{'  c=' + str(c['concurrency']) + ' throughput, audio s per wall s':<40}"
            f"{_fmt(c['throughput_audio_s_per_s']):>12}{_fmt(serial):>12}"
            f"{_fmt(_ratio(c['throughput_audio_s_per_s'], serial)):>10}"
        )
    b = s.get("batching")
    if b:  # the batching target: top level's throughput over one request's; then the same in-process
        n = b["concurrency"]
        lines.append(f"{'  c=' + str(n) + ' / c=1 throughput':<40}{_fmt(b['server']):>12}")
        if b.get("lm_only_in_process") is not None:
            lines.append(f"{'    in-process: LM alone ' + str(n) + ' / 1':<40}{_fmt(b['lm_only_in_process']):>12}")
            lines.append(
                f"{'    in-process: LM + codec bound ' + str(n) + ' / 1':<40}"
                f"{_fmt(b['bound_with_codec_in_process']):>12}"
            )
    mem = srv.get("memory", {}).get("peak", {})
    lines.append(
        f"{'peak memory MB (server tree PSS / ref RSS)':<40}{_fmt(mem.get('pss_mb')):>12}"
        f"{_fmt(ref.get('peak_rss_mb')):>12}{_fmt(_ratio(mem.get('pss_mb'), ref.get('peak_rss_mb'))):>10}"
    )
    lines.append(f"{'  server tree RSS sum (double-counts shared)':<40}{_fmt(mem.get('rss_mb')):>12}")
    pa = srv.get("perf_analyzer", {})
    for model in ("musicgen_info", "musicgen"):
        for r in (pa.get(model) or {}).get("rows", []) if isinstance(pa.get(model), dict) else []:
            lines.append(
                f"{'perf_analyzer ' + model + ' c=' + str(r['concurrency']) + ' p50 ms, inf/s':<40}"
                f"{_fmt(r['p50_ms']):>12}{'':>12}{_fmt(r['infer_per_s']):>10}"
            )
    lines.append(
        "ratios (results.json `ratios`): "
        + ", ".join(
            f"{k} {_fmt(v)}"
            if not isinstance(v, dict)
            else f"{k} " + "/".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items())
            for k, v in results.get("ratios", {}).items()
            if k not in ("machine", "reference_setting")
        )
    )
    return "\n".join(lines)


def write_outputs(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json"]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    srv = results.get("server", {})
    ref = {r["duration"]: r for r in results.get("reference", {}).get("runs", [])}
    rtf_rows = [
        {
            **r,
            "reference_wall_s": ref.get(r["duration"], {}).get("wall_s"),
            "reference_rtf": ref.get(r["duration"], {}).get("rtf"),
        }
        for r in srv.get("single", [])
    ]
    write_csv(out / "rtf.csv", rtf_rows)
    write_csv(out / "concurrency.csv", srv.get("concurrency", []))
    steps = results.get("steps", {})
    write_csv(
        out / "steps.csv",
        [{"implementation": "ours (LanguageModel.step)", **{k: v for k, v in steps.items() if not isinstance(v, dict)}}]
        + [{"implementation": f"reference decoder forward, {r['duration']:g} s", **r} for r in ref.values()],
    )
    files += [out / n for n in ("rtf.csv", "concurrency.csv", "steps.csv")]
    from .plots import plot_all

    files += plot_all(results, out)
    (out / "summary.txt").write_text(table(results) + "\n")
    files.append(out / "summary.txt")
    return files


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def best_read_rate(probes: dict, profiles: list) -> tuple[str, float]:
    """The floor's bandwidth: the fastest reading of memory measured in this run — the probes (GB/s by
    name), or the step's own MatMuls reading their weights (profiled, so if anything slower than
    unprofiled). numpy's sum has read slower than the MatMul kernels on this machine (a floor above
    the step it bounds); a floor must not be raised by a slow probe."""
    rates = dict(probes)
    for sp in profiles:
        if sp.get("weights_gbps"):
            rates[f"step MatMuls, {sp['requests']} request(s), profiled"] = sp["weights_gbps"]
    return max(rates.items(), key=lambda kv: kv[1])


def run(cfg: Config) -> dict:
    from . import machine, measure

    t_all = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "machine": machine.describe(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_at_start": os.getloadavg(),
    }
    timings = results.setdefault("phase_seconds", {})

    t = time.perf_counter()
    if cfg.repository:
        repo = Path(cfg.repository)
        log(f"using the staged repository {repo}")
    else:
        repo = WORK / f"repo-{Path(cfg.checkpoint).name}-{cfg.precision}" / "model_repository"
        log(f"export {cfg.checkpoint} ({cfg.precision}) into {repo}")
        stage_repository(repo, cfg.checkpoint, cfg.precision)
    timings["export"] = time.perf_counter() - t
    results["repository"] = str(repo)

    t = time.perf_counter()
    log("memory bandwidth")
    repeats = 3 if cfg.quick else 5
    bw1 = measure.memory_bandwidth(cfg.bandwidth_mb, repeats, threads=1)
    bwn = measure.memory_bandwidth(cfg.bandwidth_mb, repeats, threads=os.cpu_count() or 1)
    bwo = measure.matmul_read(cfg.bandwidth_mb, repeats)
    bwr = measure.raw_read(cfg.bandwidth_mb, repeats)
    results["bandwidth"] = {"single_thread": bw1, "all_threads": bwn, "onnxruntime_matmul": bwo, "avx2_2mb_pages": bwr}
    probes = {
        "numpy sum, 1 thread": bw1["read_gbps"],
        f"numpy sum, {bwn['threads']} threads": bwn["read_gbps"],
        "onnxruntime MatMul, 2 rows": bwo["read_gbps"],
    }
    if bwr:
        probes[f"AVX2 loads, 2 MB pages, {bwr['threads']} threads"] = bwr["read_gbps"]
    results["machine"]["memory_read_gbps"] = max(probes.values())
    results["machine"]["label"] = machine.label(results["machine"])
    log(f"machine: {results['machine']['label']}")
    log("decode step timing in-process")
    lm_dir = measure.lm_model_dir(repo)
    steps = measure.decode_steps(lm_dir, cfg.step_duration, seed=cfg.seed, clips=cfg.step_clips)
    results["steps"] = steps
    dims = _lm_dims(lm_dir)
    steps["sampling"] = measure.sampling_cost(dims.num_codebooks, dims.vocab_size)
    top = max(cfg.concurrency)
    if top > 1:
        log(f"batching in-process: the LM alone for 1 and {top} clips of {cfg.concurrency_duration:g} s, the codec")
        results["batch_scaling"] = measure.batch_scaling(repo, cfg.concurrency_duration, top, seed=cfg.seed)
    log("decode step profile (ORT's node profiler) at mid-clip")
    results["step_profile"] = [measure.step_profile(lm_dir, cfg.step_duration, 1, seed=cfg.seed)]
    if top > 1 and cfg.profile_top:
        results["step_profile"].append(measure.step_profile(lm_dir, cfg.concurrency_duration, top, seed=cfg.seed))
    source, read = best_read_rate(probes, results["step_profile"])
    steps.update(
        {
            "weight_bytes": measure.weight_bytes(lm_dir),
            "read_gbps_used": read,
            "read_gbps_source": source,
            "floor_ms": steps["step_read_bytes"] / (read * 1e9) * 1000.0,
        }
    )
    timings["bandwidth_and_steps"] = time.perf_counter() - t

    if cfg.reference:
        t = time.perf_counter()
        setting = cfg.reference_setting
        if cfg.tune_reference and not setting:
            log("reference settings: alternating A/B of the transformers decoder step (bench.reference_tuning)")
            results["reference_tuning"] = tune_reference(cfg)
            setting = results["reference_tuning"]["chosen"]
        else:
            results["reference_tuning"] = {
                "searched": False,
                "setting": setting or "default",
                "note": REFERENCE_TUNING_NOTE,
            }
        timings["reference_tuning"] = time.perf_counter() - t
        t = time.perf_counter()
        how = f"a {cfg.reference_extrapolate_from:g} s clip, extrapolated" if cfg.reference_extrapolate_from else ""
        log(
            f"reference: transformers generate on {cfg.checkpoint} for {cfg.durations} s {how} "
            f"(setting: {setting or 'default'})"
        )
        results["reference"] = run_reference(cfg, out, setting)
        timings["reference"] = time.perf_counter() - t
        if "error" in results["reference"]:
            log(results["reference"]["error"])
        else:
            results["machine"]["torch"] = results["reference"].get("torch_build")

    t = time.perf_counter()
    log("server: start tritonserver")
    results["server"] = run_server_phase(cfg, repo, out)
    timings["server"] = time.perf_counter() - t

    results["summary"] = summarize(results)
    results["ratios"] = ratios(results, results["summary"])
    timings["total"] = time.perf_counter() - t_all
    results["files"] = [str(p) for p in write_outputs(results, out)]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench", description="MusicGen on Triton vs transformers, one run.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run on tiny-random (well under 2 minutes): framework overheads, not speed",
    )
    mode.add_argument(
        "--short",
        action="store_true",
        help="the regression guard: small-random int8, the full run's ratios in about 5 minutes",
    )
    p.add_argument("--checkpoint", help="preset, HF directory or hub id (default small-random; quick: tiny-random)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="LM precision of the export (default fp32)")
    p.add_argument("--repository", type=Path, help="an already staged model repository (skips the export)")
    p.add_argument("--durations", type=float, nargs="+", help="clip seconds for RTF (default 5 10 30; quick 1 2)")
    p.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 2 4 8; quick 1 2 4)")
    p.add_argument("--concurrency-duration", type=float, help="clip seconds at each level (default 5; quick 1)")
    p.add_argument("--requests-per-level", type=int, help="requests per level (default 2 x concurrency)")
    p.add_argument("--no-reference", action="store_true", help="skip the transformers reference")
    p.add_argument(
        "--reference-setting",
        choices=list(REFERENCE_SETTINGS),
        help="run the reference under this setting (bench/reference_tuning.py) without searching",
    )
    p.add_argument(
        "--no-reference-tuning",
        action="store_true",
        help="skip the A/B search of the reference's settings (the full run does it; short and quick do not)",
    )
    p.add_argument("--pairs", type=int, help="in-process / unary / streamed rounds per duration (default 2; short 1)")
    p.add_argument(
        "--long-clip", type=float, help="seconds of one streamed long clip (default 120; quick 40; short 0 = skip)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--perf-analyzer", action="store_true", default=None, help="run perf_analyzer (default: not in quick)"
    )
    g.add_argument("--no-perf-analyzer", action="store_true", help="skip perf_analyzer")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<checkpoint>)")
    a = p.parse_args(argv)
    kw = dict(
        checkpoint=a.checkpoint,
        precision=a.precision,
        repository=a.repository,
        durations=a.durations,
        concurrency=a.concurrency,
        concurrency_duration=a.concurrency_duration,
        requests_per_level=a.requests_per_level,
        pairs=a.pairs,
        reference_setting=a.reference_setting,
        long_clip=a.long_clip,
    )
    if a.quick:
        cfg = Config.quick_defaults(**kw)
    elif a.short:
        cfg = Config.short_defaults(**kw)
    else:
        cfg = Config(**{k: v for k, v in kw.items() if v is not None})
    if a.no_reference:
        cfg.reference = False
    if a.no_reference_tuning:
        cfg.tune_reference = False
    if a.perf_analyzer:
        cfg.perf_analyzer = True
    if a.no_perf_analyzer:
        cfg.perf_analyzer = False
    suffix = "-quick" if cfg.quick else f"-{cfg.precision}-short" if cfg.short else ""
    cfg.out = a.out or DEFAULT_OUT / (Path(cfg.checkpoint).name + suffix)
    return cfg


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        results = run(cfg)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        if os.environ.get("MUSICGEN_DEBUG"):
            raise
        return 1
    print(table(results))
    log(f"wrote {cfg.out} in {results['phase_seconds']['total']:.0f} s")
    errors = [f"{k}: {v['error']}" for k, v in results.items() if isinstance(v, dict) and v.get("error")]
    for e in errors:
        log(f"FAILED {e}")
    for line in results.get("server", {}).get("server_log_tail", [])[-15:]:
        log(f"  tritonserver: {line}")
    return 1 if errors else 0
