"""In-process measurements: memory bandwidth (numpy) and the LM decode step (musicgen_runtime.lm)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from musicgen_runtime import cpu_kernels, names
from musicgen_runtime.lm import GenerationRequest


def _best(fn, repeats: int) -> float:
    fn()  # touch the pages
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def memory_bandwidth(mb: int = 512, repeats: int = 5, threads: int = 1) -> dict:
    """GB/s (1e9 bytes/s) of reading (`sum`) and copying (`copyto`, read + write bytes counted) a
    `mb` MiB float32 array, best of `repeats`, split across `threads` threads (numpy releases the GIL).

    The array must be much larger than the last-level cache for this to be DRAM bandwidth.
    """
    n = (mb << 20) // 4
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]

    def parallel(op):
        def run():
            ts = [threading.Thread(target=op, args=(lo, hi)) for lo, hi in bounds]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        return run

    read_s = _best(parallel(lambda lo, hi: a[lo:hi].sum()), repeats) if threads > 1 else _best(lambda: a.sum(), repeats)
    copy_s = (
        _best(parallel(lambda lo, hi: np.copyto(b[lo:hi], a[lo:hi])), repeats)
        if threads > 1
        else _best(lambda: np.copyto(b, a), repeats)
    )
    nbytes = a.nbytes
    return {
        "array_mb": mb,
        "threads": threads,
        "read_gbps": nbytes / read_s / 1e9,
        "copy_gbps": 2 * nbytes / copy_s / 1e9,
        "repeats": repeats,
    }


def raw_read(mb: int = 512, repeats: int = 5, threads: int | None = None) -> dict | None:
    """GB/s of reading a `mb` MiB buffer on 2 MB pages with AVX2 loads, four streams side by side per thread
    (cpu_kernels' read probe), split across `threads` threads (all CPUs by default), best of `repeats`: the
    fastest read this machine gives a program (our GEMV reads its weights from a copy on 2 MB pages, in
    three streams per thread; over 4 KB pages one stream ran a quarter slower on the 2-core EPYC VM).
    None without the kernel library."""
    import ctypes
    import mmap
    import os

    library = cpu_kernels.library()
    if library is None:
        return None
    read = ctypes.CDLL(str(library)).musicgen_read_bytes
    read.restype, read.argtypes = ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_size_t]
    nbytes, huge = mb << 20, 2 << 20
    region = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(region, np.uint8)
    start = (-raw.ctypes.data) % huge
    buf = raw[start : start + nbytes]
    buf[:] = 1
    threads = threads or os.cpu_count() or 1
    parts = [(buf.ctypes.data + i * (nbytes // threads), nbytes // threads) for i in range(threads)]
    # each thread reads its part several times (at least 1 GiB in all): the threads start one after another,
    # and one read of 256 MiB gave 39-41 GB/s on the 2-core VM against 46-47 over 1 GiB
    passes = max(1, -(-1024 // mb))

    def read_part(address, size):
        for _ in range(passes):
            read(address, size)

    def run():  # ctypes lets go of the GIL during the call
        ts = [threading.Thread(target=read_part, args=part) for part in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    seconds = _best(run, repeats)
    del raw, buf
    region.close()
    return {
        "array_mb": mb,
        "threads": threads,
        "read_gbps": passes * (nbytes // threads * threads) / seconds / 1e9,
        "passes": passes,
        "repeats": repeats,
    }


def matmul_read(mb: int = 512, repeats: int = 5, threads: int | None = None) -> dict:
    """GB/s of onnxruntime reading `mb` MiB of fp32 weights the way a decode step does: 2 rows times
    16 MatMul weights [1024, n] (MLAS's packed GEMM), best of `repeats`. A probe with the step's own
    kind of kernel: numpy's sum has read slower than the step's MatMuls on this machine."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    parts = 16
    n = max(1, (mb << 20) // 4 // 1024 // parts)
    rng = np.random.default_rng(0)  # distinct weights: identical ones can end up shared (and cached)
    nodes, inits, outs = [], [], []
    for i in range(parts):
        inits.append(numpy_helper.from_array(rng.random((1024, n), np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [2, n]))
    graph = helper.make_graph(
        nodes, "read", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1024])], outs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.ones((2, 1024), np.float32)
    seconds = _best(lambda: sess.run(None, {"x": x}), repeats)
    return {
        "weights_mb": parts * 1024 * n * 4 / (1 << 20),
        "read_gbps": parts * 1024 * n * 4 / seconds / 1e9,
        "repeats": repeats,
    }


def lm_model_dir(repository: Path) -> Path:
    """The model dir holding decoder_step.onnx (lm_engine/1 in this repository layout)."""
    for name in ("lm_engine", "musicgen_lm"):
        d = Path(repository) / name / "1"
        if (d / names.DECODER_STEP_FILE).exists():
            return d
    found = sorted(Path(repository).glob(f"*/1/{names.DECODER_STEP_FILE}"))
    if not found:
        raise FileNotFoundError(f"no {names.DECODER_STEP_FILE} under {repository}: export first")
    return found[0].parent


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the decoder step graph and its external weights (what is on disk)."""
    return sum(f.stat().st_size for f in Path(model_dir).glob(names.DECODER_STEP_FILE + "*"))


def step_weight_bytes(model_dir: Path, graph_file: str = names.DECODER_STEP_FILE) -> int:
    """Bytes of the step graph's initializers that every step reads in full: all of them except the
    tables read through Gather (codebook embeddings, position table), of which a step reads one row
    per token. Read from the graph itself (no weights loaded)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(Path(model_dir) / graph_file), load_external_data=False).graph
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    used_otherwise = {i for n in graph.node if n.op_type != "Gather" for i in n.input}
    total = 0
    for init in graph.initializer:
        if init.name in gathered and init.name not in used_otherwise:
            continue
        count = int(np.prod(init.dims)) if init.dims else 1
        total += count * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total


def step_cache_bytes(lm, rows: int, positions: int, text_tokens: int) -> int:
    """Bytes of K/V a step reads besides the weights: the self-attention cache up to `positions`
    and the cross-attention K/V of `text_tokens`, for `rows` rows, every layer."""
    d = lm.dims
    cross = 2 * lm.num_layers * rows * d.num_heads * d.head_dim * np.dtype(lm.decoder.cross_dtype).itemsize
    return lm.num_layers * 2 * rows * lm.cache.position_bytes * positions + cross * text_tokens


def _lm_and_prompt(
    model_dir: Path, duration: float, text_tokens: int, seed: int, threads: int | None, max_rows: int = 32
):
    """An in-process LM and a stand-in prompt for timing it: random projected text states of
    `text_tokens` tokens (a step's cost does not depend on their values), an all-ones mask, the frame
    count of `duration`, and the generator that made the states."""
    from musicgen_runtime import delay
    from musicgen_runtime.variants import open_language_model

    lm = open_language_model(model_dir, threads=threads, max_rows=max_rows)
    rng = np.random.default_rng(seed)
    hidden = (rng.standard_normal((text_tokens, lm.dims.hidden_size)) * 0.1).astype(np.float32)
    return lm, hidden, np.ones(text_tokens, np.int64), delay.frames_for_duration(duration, lm.dims.frame_rate), rng


def decode_steps(
    model_dir: Path,
    duration: float,
    guidance_scale: float = 3.0,
    seed: int = 0,
    text_tokens: int = 12,
    threads: int | None = None,
    clips: int = 3,
) -> dict:
    """Time every `LanguageModel.step()` of one request alone (CFG: 2 rows) for `duration` seconds of audio,
    `clips` times over; the step time is the median of the clips' medians (a single clip's median moved by
    up to a fifth between runs on a shared 2-core machine).

    The step includes the ONNX decoder step and the numpy guidance + sampling (top-k 250).
    """
    from musicgen_runtime.validation import GenerationParams

    t0 = time.perf_counter()
    lm, hidden, mask, frames, _ = _lm_and_prompt(model_dir, duration, text_tokens, seed, threads)
    load_s = time.perf_counter() - t0
    per_clip = []
    for _ in range(max(1, clips)):
        params = GenerationParams(duration=duration, guidance_scale=guidance_scale, seed=seed)
        seq = lm.prepare(GenerationRequest(hidden, mask, params, frames))
        lm.add(seq)
        times = []
        while not seq.done:
            t = time.perf_counter()
            lm.step()
            times.append(time.perf_counter() - t)
        if seq.error is not None:
            raise seq.error
        per_clip.append(np.array(times[1:] or times) * 1000.0)  # the first step also builds the batch state
    ms = np.concatenate(per_clip)
    medians = [float(np.median(c)) for c in per_clip]
    median = float(np.median(medians))
    tail = np.concatenate([c[-max(1, c.size // 10) :] for c in per_clip])
    # what the median step reads: the weights of the graph that ran it, and the cache at mid-clip
    graph_file = (
        names.DECODER_STEP_BLOCKWISE_INT8_FILE
        if lm.decoder.select(seq.rows) is lm.decoder.blockwise_int8_sess
        else names.DECODER_STEP_FILE
    )
    read_bytes = step_weight_bytes(model_dir, graph_file) + step_cache_bytes(
        lm, seq.rows, (len(times) + 1) // 2, text_tokens
    )
    return {
        "model_dir": str(model_dir),
        "load_s": load_s,
        "steps": len(times),
        "frames": frames,
        "rows": seq.rows,
        "past_max": len(times),
        "clips": len(per_clip),
        "step_ms_median": median,
        "step_ms_median_per_clip": medians,
        "step_ms_p10": float(np.percentile(ms, 10)),
        "step_ms_p90": float(np.percentile(ms, 90)),
        "step_ms_last10pct": float(np.median(tail)),
        "steps_per_s": 1000.0 / median,
        "precision": lm.manifest.get("precision"),
        "cache_dtype": np.dtype(lm.cache_dtype).name,
        "step_graph": graph_file,
        "step_read_bytes": int(read_bytes),
    }


def sampling_cost(
    num_codebooks: int, vocab_size: int, top_k: int = 250, guidance_scale: float = 3.0, repeats: int = 300
) -> dict:
    """Microseconds of one request's per-step numpy work (`SequenceState.advance`'s guidance and top-k
    sampling over [K, V] logits of its 2 CFG rows), the median of 5 batches of `repeats`: on one core,
    what every request adds to every batched step on top of the graph."""
    from musicgen_runtime import sampling

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, num_codebooks, 1, vocab_size)).astype(np.float32)

    def one():
        cond, uncond = logits[0, :, -1, :].astype(np.float32), logits[1, :, -1, :].astype(np.float32)
        sampling.sample(sampling.guide(cond, uncond, guidance_scale), top_k, 0.0, 1.0, rng)

    for _ in range(20):
        one()
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats):
            one()
        batches.append((time.perf_counter() - t) / repeats * 1e6)
    return {
        "us_per_request_step": float(np.median(batches)),
        "codebooks": num_codebooks,
        "vocab": vocab_size,
        "top_k": top_k,
    }


def batch_scaling(
    repository: Path, duration: float, requests: int, text_tokens: int = 12, seed: int = 0, threads: int | None = None
) -> dict:
    """What batching can give on this machine before any server work: the LM alone generating one clip,
    then `requests` clips together (continuous batching's step, all joined at the first step), and the
    codec decoding one clip.

    On a CPU the codec runs on the cores the LM steps on, once per request after its last step, so
    `requests` clips cost at least LM(requests) + requests x codec seconds of the machine, and the
    throughput of `requests` concurrent requests over one request is at most
    requests x (LM(1) + codec) / (LM(requests) + requests x codec).
    """
    from musicgen_runtime.codec import AudioDecoder
    from musicgen_runtime.validation import GenerationParams

    lm, hidden, mask, frames, rng = _lm_and_prompt(
        lm_model_dir(repository), duration, text_tokens, seed, threads, max_rows=2 * requests
    )
    d = lm.dims

    def generate(n: int) -> dict:
        seqs = [
            lm.prepare(GenerationRequest(hidden, mask, GenerationParams(duration=duration, seed=seed + i), frames))
            for i in range(n)
        ]
        t = time.perf_counter()
        lm.run_together(seqs)
        wall = time.perf_counter() - t
        for s in seqs:
            if s.error is not None:
                raise s.error
        steps = seqs[0].steps  # all joined at the first step and equally long: one batched step each
        return {
            "requests": n,
            "wall_s": wall,
            "steps": steps,
            "step_ms_mean": wall / steps * 1000.0,
            "audio_s_per_s": n * duration / wall,
        }

    lm_runs = [generate(1), generate(requests)]
    codec = AudioDecoder.from_directory(Path(repository) / "audio_decoder" / "1", threads=threads)
    codes = rng.integers(0, d.vocab_size, (1, d.num_codebooks, frames))  # [B, K, T]
    codec(codes)  # first run: allocations
    codec_s = float(np.median([_timed(lambda: codec(codes)) for _ in range(3)]))
    one, many = lm_runs
    return {
        "clip_s": duration,
        "lm": lm_runs,
        "codec_s_per_clip": codec_s,
        "lm_only_ratio": many["audio_s_per_s"] / one["audio_s_per_s"],
        "bound_with_codec": requests * (one["wall_s"] + codec_s) / (many["wall_s"] + requests * codec_s),
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


WEIGHT_OPS = {
    cpu_kernels.OP,
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMul",
    "FusedMatMul",
    "Gemm",
}
ATTENTION_OPS = {
    "GroupQueryAttention": "self_attention",
    cpu_kernels.ATTENTION_OP: "self_attention",
    "MultiHeadAttention": "cross_attention",
    cpu_kernels.CROSS_ATTENTION_OP: "cross_attention",
}


def step_profile(
    model_dir: Path,
    duration: float,
    requests: int = 1,
    steps: int = 20,
    text_tokens: int = 12,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Where a decode step's time goes, by ORT's node profiler: `requests` requests (2 CFG rows each)
    generate to mid-clip, then `steps` steps run on a profiling session of the graph the batch uses.

    Per step: milliseconds by op type, grouped into the weight-reading MatMuls (with the rate at which
    they read the graph's weights, the floor's bytes without the cache), self-attention, cross-attention
    and everything else. The profiler adds its own cost; compare shares, not totals, with decode_steps.
    """
    import json
    import tempfile
    from collections import Counter

    from musicgen_runtime.onnx_session import open_graph
    from musicgen_runtime.validation import GenerationParams

    lm, hidden, mask, frames, _ = _lm_and_prompt(model_dir, duration, text_tokens, seed, threads, max_rows=2 * requests)
    seqs = [
        lm.prepare(GenerationRequest(hidden, mask, GenerationParams(duration=duration, seed=seed + i), frames))
        for i in range(requests)
    ]
    for s in seqs:
        lm.add(s)
    warm = seqs[0].steps // 2
    steps = max(1, min(steps, seqs[0].steps - warm - 1))
    for _ in range(warm):
        lm.step()
    rows = lm.rows_used
    blockwise = lm.decoder.select(rows) is lm.decoder.blockwise_int8_sess
    graph_file = names.DECODER_STEP_BLOCKWISE_INT8_FILE if blockwise else names.DECODER_STEP_FILE
    with tempfile.TemporaryDirectory() as tmp:
        sess = open_graph(Path(model_dir) / graph_file, lm.device, threads, profile_prefix=str(Path(tmp) / "step"))
        if blockwise:  # the batch's next steps run on the profiling session of the same graph
            lm.decoder.blockwise_int8_sess = sess
        else:
            lm.decoder.sess = sess
        t = time.perf_counter()
        for _ in range(steps):
            lm.step()
        wall = time.perf_counter() - t
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run") or steps
    by_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1000.0 / runs  # us -> ms per step
    groups = {"weights": 0.0, "self_attention": 0.0, "cross_attention": 0.0, "other": 0.0}
    for op, ms in by_op.items():
        groups["weights" if op in WEIGHT_OPS else ATTENTION_OPS.get(op, "other")] += ms
    weight_bytes = step_weight_bytes(model_dir, graph_file)
    return {
        "requests": requests,
        "rows": rows,
        "graph": graph_file,
        "position": warm,
        "steps": steps,
        "wall_ms_per_step": wall / steps * 1000.0,
        "kernel_ms_per_step": sum(by_op.values()),
        "by_op_ms": dict(by_op.most_common()),
        **{f"{k}_ms": v for k, v in groups.items()},
        "weight_bytes": weight_bytes,
        "weights_gbps": weight_bytes / (groups["weights"] / 1000.0) / 1e9 if groups["weights"] else None,
    }
