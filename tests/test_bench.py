"""The benchmark harness: its quick mode end to end (real tritonserver, real transformers reference),
and its measuring pieces (process-tree memory, bandwidth, perf_analyzer)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import machine, measure, perf_analyzer, procmem

ROOT = Path(__file__).resolve().parent.parent


def test_process_tree_memory_counts_children():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)",
        ]
    )
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            m = procmem.tree_memory(os.getpid())
            if child.pid in procmem.tree_pids(os.getpid()) and procmem.tree_memory(child.pid)["rss_mb"] > 80:
                break
            time.sleep(0.1)
        assert procmem.tree_memory(child.pid)["rss_mb"] > 80
        assert m["processes"] >= 2 and m["rss_mb"] > 80 and 0 < m["pss_mb"] <= m["rss_mb"] + 1
        with procmem.PeakSampler(child.pid, interval=0.05) as s:
            s.mark("phase")
            time.sleep(0.2)
        assert s.peak["rss_mb"] > 80 and s.phases["phase"]["rss_mb"] > 80
    finally:
        child.kill()
        child.wait()


def test_process_tree_cpu_by_model_name():
    """Where a served request's CPU time goes: per process of the tree, a python stub named by its model."""
    burn = (
        "import sys, time; sys.stdin.readline(); t = time.process_time(); "
        "[0 for _ in iter(lambda: time.process_time() - t > 0.5, True)]; time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", burn, "/x/lm_engine/1/model.py"], stdin=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and procmem.process_label(child.pid) != "lm_engine":  # until exec
            time.sleep(0.05)
        assert procmem.process_label(child.pid) == "lm_engine"
        before = procmem.tree_cpu(os.getpid())
        child.stdin.write(b"go\n")  # the child burns 0.5 s of CPU from here on
        child.stdin.flush()
        while time.time() < deadline and procmem.tree_cpu(child.pid)["lm_engine"]["cpu_s"] < 0.5:
            time.sleep(0.1)
        delta = procmem.cpu_delta(before, procmem.tree_cpu(os.getpid()))
        assert delta["lm_engine"]["cpu_s"] >= 0.3 and delta["lm_engine"]["threads_busy"] >= 1
        assert next(iter(delta)) == "lm_engine"  # busiest first
    finally:
        child.kill()
        child.wait()


def test_machine_record_names_the_cpu_and_the_libraries():
    m = machine.describe(read_gbps=12.5)
    assert m["cpu_model"] and m["cpu_vendor"] and m["cpus"] == os.cpu_count()
    assert set(m["flags"]) <= set(machine.FLAGS_OF_INTEREST)
    assert m["onnxruntime"]["version"] and m["memory_read_gbps"] == 12.5
    label = machine.label(m)
    assert m["cpu_model"] in label and m["cpu_vendor"] in label and "12.5 GB/s" in label


def test_short_mode_is_the_ratio_run_and_quick_the_ci_smoke_run():
    from bench.harness import parse_args

    short = parse_args(["--short"])
    assert (short.checkpoint, short.precision, short.short, short.quick) == ("small-random", "int8", True, False)
    assert short.durations == [5.0, 10.0] and max(short.concurrency) == 8 and short.reference_extrapolate_from
    assert short.out.name == "small-random-int8-short" and short.reference_setting == "mkl_cbwr"
    quick = parse_args(["--quick"])
    assert (quick.checkpoint, quick.quick, quick.short, quick.tune_reference) == ("tiny-random", True, False, False)
    full = parse_args([])
    assert full.tune_reference and full.durations == [5.0, 10.0, 30.0] and max(full.concurrency) == 8
    assert (full.long_clip, quick.long_clip, short.long_clip) == (120.0, 40.0, 0.0)
    with pytest.raises(SystemExit):
        parse_args(["--short", "--quick"])


def test_reference_extrapolates_from_a_short_clip_and_records_its_build():
    """The short mode's reference: one short clip generated, longer clips extrapolated from its steps."""
    from bench import reference

    r = reference.run(
        "tiny-random",
        [1.0, 2.0],
        prompt="x",
        seed=0,
        top_k=250,
        top_p=0.0,
        temperature=1.0,
        guidance_scale=3.0,
        extrapolate_from=0.5,
    )
    one, two = r["runs"]
    assert [one["duration"], two["duration"]] == [1.0, 2.0] and two["steps"] > one["steps"]
    assert one["extrapolated_from"]["duration"] == 0.5 and two["wall_s"] > one["wall_s"] > 0
    t = r["torch_build"]  # machine.torch_build(), in the reference's process
    assert (
        t["version"]
        and t["threads"] >= 1
        and any("MKL" in ln or "oneDNN" in ln or "BLAS" in ln for ln in t["build"] + [str(t["blas"])])
    )
    assert r["mkldnn"] is True


def test_reference_tuning_alternates_settings():
    from bench.reference_tuning import search

    res = search("tiny-random", ["default", "threads_1"], rounds=2, steps=3, past=8, profile=False)
    for name in ("default", "threads_1"):
        st = res["settings"][name]
        assert len(st["round_medians_ms"]) == 2 and st["step_ms_median"] > 0
    assert res["settings"]["default"]["vs_first"] == 1.0 and res["settings"]["threads_1"]["torch_threads"] == 1


def test_reference_setting_is_chosen_only_when_clearly_faster():
    from bench.harness import clear_winner

    def st(median, rounds):
        return {"step_ms_median": median, "round_medians_ms": rounds}

    base = st(200.0, [200, 210, 190, 205, 200, 198])
    assert clear_winner({"default": base, "a": st(150.0, [150, 160, 140, 150, 155, 300])}) == "a"
    assert clear_winner({"default": base, "a": st(185.0, [180] * 6)}) == "default"  # not 10 % faster
    assert clear_winner({"default": base, "a": st(150.0, [150, 400, 400, 150, 400, 150])}) == "default"  # 3 of 6
    assert clear_winner({"default": base, "a": st(250.0, [250] * 6)}) == "default"


def test_bandwidth_and_decode_step_measurements(tiny_repo):
    bw = measure.memory_bandwidth(64, 2)
    assert bw["read_gbps"] > 0.5 and bw["copy_gbps"] > 0.5
    d = measure.lm_model_dir(tiny_repo)
    assert d == tiny_repo / "lm_engine" / "1"
    assert measure.weight_bytes(d) > 0
    st = measure.decode_steps(d, 0.5)
    assert st["steps"] == 25 + 3 and st["rows"] == 2 and st["step_ms_median"] > 0
    per_clip = st["step_ms_median_per_clip"]
    assert st["clips"] == len(per_clip) == 3 and st["step_ms_median"] == sorted(per_clip)[1]


def test_step_read_bytes_count_weights_read_and_the_cache(tiny_repo):
    """The floor's bytes: every weight but the gathered tables (one row each per token), plus K/V read."""
    from musicgen_runtime.variants import open_language_model

    d = measure.lm_model_dir(tiny_repo)
    lm = open_language_model(d, max_rows=2, max_steps=64)
    dims = lm.dims
    tables = 4 * (dims.num_codebooks * (dims.vocab_size + 1) * dims.hidden_size + dims.max_positions * dims.hidden_size)
    read = measure.step_weight_bytes(d)
    assert 0 < read <= measure.weight_bytes(d) - tables
    kv_per_position = 2 * dims.num_layers * 2 * dims.num_heads * dims.head_dim * 4  # K and V, 2 rows, fp32
    assert measure.step_cache_bytes(lm, rows=2, positions=10, text_tokens=5) == kv_per_position * 15
    st = measure.decode_steps(d, 0.5)
    assert st["step_read_bytes"] == read + measure.step_cache_bytes(lm, 2, (st["steps"] + 1) // 2, 12)


def test_perf_analyzer_against_the_server(triton, tmp_path):
    try:
        perf_analyzer.ensure_perf_analyzer()
    except perf_analyzer.PerfAnalyzerUnavailable as exc:
        if "pip download" in str(exc):
            pytest.skip(f"perf_analyzer wheel not reachable: {exc}")
        raise
    res = perf_analyzer.run(triton.grpc_endpoint, "musicgen_info", tmp_path, request_count=30, timeout=120)
    assert res["rows"], res
    row = res["rows"][0]
    assert row["concurrency"] == 1 and row["infer_per_s"] > 10 and 0 < row["p50_ms"] < 100


def test_quick_mode_writes_json_csv_and_plots(tiny_repo, tmp_path):
    """`python -m bench --quick` on the staged tiny repository (the export itself is the tests' procedure)."""
    out = tmp_path / "bench"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repository", str(tiny_repo), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for name in (
        "results.json",
        "rtf.csv",
        "concurrency.csv",
        "steps.csv",
        "summary.txt",
        "reference.json",
        "rtf_by_duration.png",
        "concurrency.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "rtf_by_duration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["checkpoint"] == "tiny-random" and r["config"]["quick"] is True
    assert [x["duration"] for x in r["server"]["single"]] == [1.0, 2.0]
    for x in r["server"]["single"]:
        assert x["rtf"] > 0 and 0 < x["time_to_first_chunk_s"] <= x["stream_wall_s"]
        assert x["stream_codes_equal_unary"] is True and x["served_codes_equal_in_process"] is True
        assert x["served_over_in_process"] == pytest.approx(x["wall_s"] / x["in_process_s"])
        steps = x["engine_step_ms_median"]  # in-process, and inside the server from its step log
        assert steps["in_process"] > 0 and steps["unary"] > 0 and steps["stream"] > 0
        cpu = x["cpu_s_last_pair"]
        assert cpu["unary"]["lm_engine"]["cpu_s"] > 0 and cpu["in_process"]["harness (in-process engine)"] > 0
        assert x["stream_audio_max_abs_diff"] < 1e-6  # joined stream chunks vs the one-shot decode: the same audio
    m = r["machine"]
    assert m["cpu_model"] and m["cpu_vendor"] and m["memory_read_gbps"] > 0 and m["torch"]["build"]
    assert m["cpu_model"] in p.stdout.splitlines()[0]
    ratios = r["ratios"]
    assert ratios["machine"] == m["label"] and ratios["step_over_floor"] > 0
    assert ratios["concurrency4_over_bound"] > 0 and ratios["reference_setting"] == "default"
    assert set(ratios["served_over_inprocess"]) == {"unary_1s", "streamed_1s", "unary_2s", "streamed_2s"}
    assert set(ratios["streamed_rtf"]) == {"1s", "2s"} and ratios["ours_vs_reference_10s"] is None  # no 10 s clip
    assert r["reference_tuning"]["searched"] is False and "ratios (results.json" in p.stdout
    # a streamed 40 s clip (windows of 30 s): its RTF and first chunk, next to the 1 s clip's
    long = r["server"]["long_clip"]
    assert long["duration"] == 40.0 and long["stream_rtf"] > 0 and long["time_to_first_chunk_s"] > 0
    assert ratios["long_clip"]["first_chunk_over_short_clip"] > 0 and "streamed 40 s clip (windows)" in p.stdout
    assert [x["concurrency"] for x in r["server"]["concurrency"]] == [1, 2, 4]
    for x in r["server"]["concurrency"]:
        assert x["throughput_audio_s_per_s"] > 0 and x["latency_p95_s"] >= x["latency_p50_s"] > 0
    ref = r["reference"]
    assert "error" not in ref, ref
    assert [x["audio_s"] for x in ref["runs"]] == [1.0, 2.0] and all(x["rtf"] > 0 for x in ref["runs"])
    assert r["steps"]["floor_ms"] > 0 and r["steps"]["step_ms_median"] > 0 and r["steps"]["read_gbps_source"]
    assert r["bandwidth"]["onnxruntime_matmul"]["read_gbps"] > 0
    assert r["server"]["memory"]["peak"]["pss_mb"] > 50 and r["server"]["memory"]["peak"]["processes"] > 3
    assert all(row["ours_over_reference"] > 0 for row in r["summary"]["rtf"])
    with (out / "concurrency.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "ours/ref" in p.stdout and "RTF 1 s" in p.stdout
    assert "c=4 / c=1 throughput" in p.stdout and "streamed vs unary audio" in p.stdout
    assert "in-process: LM alone 4 / 1" in p.stdout and "LM + codec bound 4 / 1" in p.stdout
    assert [sp["requests"] for sp in r["step_profile"]] == [1, 4] and "profiled, 4 req: MatMuls ms (GB/s)" in p.stdout
    b = r["summary"]["batching"]
    assert b["concurrency"] == 4 and b["server"] > 0 and b["lm_only_in_process"] == r["batch_scaling"]["lm_only_ratio"]


def test_overhead_measurement_compares_identical_requests(tiny_repo):
    from bench.overhead import measure

    res = measure(tiny_repo, duration=0.5, pairs=2)
    assert len(res["in_process_s"]) == len(res["triton_s"]) == 2
    assert res["in_process_median_s"] > 0 and res["triton_median_s"] > 0


def test_batch_scaling_times_the_lm_alone_and_the_codec(tiny_repo):
    """The in-process batching ceiling: the same clips generated alone and together, and a codec decode."""
    r = measure.batch_scaling(tiny_repo, 0.5, 3)
    one, many = r["lm"]
    assert (one["requests"], many["requests"]) == (1, 3)
    assert one["steps"] == many["steps"] == 25 + 3  # all joined at the first step: one step per frame + delays
    assert r["codec_s_per_clip"] > 0 and one["wall_s"] > 0 and many["wall_s"] > 0
    assert r["lm_only_ratio"] == pytest.approx(3 * one["wall_s"] / many["wall_s"])
    assert r["bound_with_codec"] == pytest.approx(
        3 * (one["wall_s"] + r["codec_s_per_clip"]) / (many["wall_s"] + 3 * r["codec_s_per_clip"])
    )


def test_step_profile_splits_a_profiled_step_by_op_type(tiny_repo):
    d = measure.lm_model_dir(tiny_repo)
    for requests in (1, 3):
        p = measure.step_profile(d, 0.5, requests, steps=5)
        assert p["rows"] == 2 * requests and p["steps"] == 5 and p["position"] == 14  # mid-clip of 28 steps
        assert p["by_op_ms"]["GroupQueryAttention"] == p["self_attention_ms"] > 0
        assert p["by_op_ms"]["MultiHeadAttention"] == p["cross_attention_ms"] > 0
        groups = p["weights_ms"] + p["self_attention_ms"] + p["cross_attention_ms"] + p["other_ms"]
        assert groups == pytest.approx(p["kernel_ms_per_step"]) and p["weights_ms"] > 0
        assert p["weights_gbps"] == pytest.approx(p["weight_bytes"] / p["weights_ms"] / 1e6)
        assert p["kernel_ms_per_step"] < p["wall_ms_per_step"]


def test_the_floor_uses_the_fastest_read_measured_in_the_run():
    from bench.harness import best_read_rate

    probes = {"numpy sum, 1 thread": 15.0, "numpy sum, 2 threads": 24.0, "onnxruntime MatMul, 2 rows": 23.0}
    assert best_read_rate(probes, []) == ("numpy sum, 2 threads", 24.0)
    profiles = [{"requests": 1, "weights_gbps": 25.5}, {"requests": 8, "weights_gbps": 10.0}]
    assert best_read_rate(probes, profiles) == ("step MatMuls, 1 request(s), profiled", 25.5)
    assert best_read_rate(probes, [{"requests": 1, "weights_gbps": None}])[1] == 24.0


def test_matmul_read_probe_reads_its_weights():
    r = measure.matmul_read(32, 2)
    assert r["weights_mb"] == 32 and r["read_gbps"] > 0.5


def test_raw_read_probe_reads_huge_pages_with_the_kernel_library(monkeypatch):
    from musicgen_runtime import cpu_kernels

    cpu_kernels.build()
    r = measure.raw_read(32, 2, threads=2)
    assert r["array_mb"] == 32 and r["threads"] == 2 and r["read_gbps"] > 0.5
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    assert measure.raw_read(32, 2) is None  # no library, no probe: the floor uses the others


def test_the_read_probe_reads_every_byte_once():
    # four streams side by side: the checksum of the bytes it read equals numpy's over the whole buffer
    import ctypes

    import numpy as np

    from musicgen_runtime import cpu_kernels

    read = ctypes.CDLL(str(cpu_kernels.build())).musicgen_read_bytes
    read.restype, read.argtypes = ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_size_t]
    buf = np.random.default_rng(0).integers(0, 256, (1 << 20) + 4 * 64 * 3 + 37, dtype=np.uint8)
    part = len(buf) // 4 // 64 * 64  # the probe's stream length; the tail is summed bytewise
    lanes = buf[: 4 * part].reshape(-1, 32).sum(axis=0, dtype=np.uint64) % 256  # vpaddb per byte lane
    words = lanes.astype(np.uint8).view(np.uint64)
    expected = (int(words[0]) ^ int(words[3])) + int(buf[4 * part :].sum(dtype=np.uint64))
    assert read(buf.ctypes.data, len(buf)) == expected % (1 << 64)


def test_step_profile_groups_our_operators_with_what_they_replace():
    from musicgen_runtime import cpu_kernels

    assert cpu_kernels.OP in measure.WEIGHT_OPS
    assert measure.ATTENTION_OPS[cpu_kernels.ATTENTION_OP] == measure.ATTENTION_OPS["GroupQueryAttention"]
    assert measure.ATTENTION_OPS[cpu_kernels.CROSS_ATTENTION_OP] == measure.ATTENTION_OPS["MultiHeadAttention"]
