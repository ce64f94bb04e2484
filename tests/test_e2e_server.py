"""End to end against a real tritonserver on a tiny-random export: HTTP, gRPC, streaming, oracle, errors."""

from __future__ import annotations

import json
import math
import queue
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

PROMPT = "lofi hip hop beat with mellow piano"
TYPES = {
    "prompt": "BYTES",
    "duration": "FP32",
    "top_k": "INT32",
    "top_p": "FP32",
    "temperature": "FP32",
    "guidance_scale": "FP32",
    "seed": "INT64",
    "audio_prompt": "FP32",
    "audio_prompt_sample_rate": "INT32",
}
OUTPUTS = ("audio", "sample_rate", "audio_codes", "seed_used", "prompt_frames")
NP = {"BYTES": object, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}


def _inputs(mod, **params):
    out = []
    for name, value in params.items():
        dt = TYPES[name]
        arr = (
            np.asarray(value, NP[dt])
            if isinstance(value, np.ndarray)
            else np.array([value.encode() if isinstance(value, str) else value], dtype=NP[dt])
        )
        i = mod.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def generate_http(srv, **params):
    c = httpclient.InferenceServerClient(srv.http_endpoint, network_timeout=120)
    try:
        r = c.infer("musicgen", _inputs(httpclient, **params))
        return {n: r.as_numpy(n) for n in OUTPUTS}
    finally:
        c.close()


def generate_grpc(srv, **params):
    c = grpcclient.InferenceServerClient(srv.grpc_endpoint)
    try:
        r = c.infer("musicgen", _inputs(grpcclient, **params), client_timeout=120)
        return {n: r.as_numpy(n) for n in OUTPUTS}
    finally:
        c.close()


def concurrently(call, srv, jobs: list[dict]) -> list:
    """`call(srv, **job)` for every job at once (one thread each): each result, or the error it raised."""

    def run(kw):
        try:
            return call(srv, **kw)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(run, jobs))


def assert_healthy(srv):
    """A real small inference (the ready endpoint stays 200 even when a model's stub died)."""
    out = generate_http(srv, prompt="healthy?", duration=0.1, seed=1)
    assert out["audio"].shape == (1, 5 * 640)


@pytest.mark.parametrize("call", [generate_http, generate_grpc], ids=["http", "grpc"])
def test_unary_generation(triton, call):
    out = call(triton, prompt=PROMPT, duration=1.0, seed=3)
    assert out["sample_rate"].tolist() == [32000]
    assert out["audio"].dtype == np.float32 and out["audio"].shape == (1, 50 * 640)
    assert out["audio_codes"].shape == (4, 50) and out["audio_codes"].max() < 64
    assert out["seed_used"].tolist() == [3]
    assert np.isfinite(out["audio"]).all() and np.abs(out["audio"]).max() > 0


def test_random_seed_is_reported_and_reproduces(triton):
    a = generate_http(triton, prompt=PROMPT, duration=0.5)
    b = generate_http(triton, prompt=PROMPT, duration=0.5, seed=int(a["seed_used"][0]))
    assert np.array_equal(a["audio_codes"], b["audio_codes"])


def test_same_seed_bit_identical_different_seed_differs(triton):
    a = generate_grpc(triton, prompt=PROMPT, duration=1.0, seed=11)
    b = generate_http(triton, prompt=PROMPT, duration=1.0, seed=11)
    c = generate_http(triton, prompt=PROMPT, duration=1.0, seed=12)
    assert np.array_equal(a["audio"], b["audio"]) and np.array_equal(a["audio_codes"], b["audio_codes"])
    assert not np.array_equal(a["audio_codes"], c["audio_codes"])


def test_greedy_oracle_matches_transformers(triton, tiny_checkpoint):
    from export import checkpoints
    from export.parity import hf_greedy_codes

    model, tok = checkpoints.load(tiny_checkpoint)
    frames = 40
    ref_codes, ref_audio = hf_greedy_codes(model, tok, PROMPT, steps=frames + 3)
    out = generate_http(triton, prompt=PROMPT, duration=frames / 50, top_k=1, guidance_scale=3.0)
    assert np.array_equal(out["audio_codes"], ref_codes)
    assert np.abs(out["audio"] - ref_audio).max() < 1e-4


def stream(srv, timeout=120, **params):
    c = grpcclient.InferenceServerClient(srv.grpc_endpoint)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        c.async_stream_infer("musicgen_stream", _inputs(grpcclient, **params))
        events = []
        while True:
            result, error = q.get(timeout=timeout)
            if error is not None:
                return events, error
            ev = result.as_numpy("event")[0].decode()
            events.append((ev, result))
            if ev == "final":
                return events, None
    finally:
        c.stop_stream()


def test_streaming_progress_chunks_and_final(triton):
    events, error = stream(triton, prompt=PROMPT, duration=2.5, seed=5)
    assert error is None
    kinds = [e for e, _ in events]
    assert kinds[-1] == "final" and "progress" in kinds and kinds.count("audio_chunk") >= 3
    done = [int(r.as_numpy("frames_done")[0]) for e, r in events if e == "progress"]
    assert done == sorted(done) and done[-1] == 125
    chunks = [(int(r.as_numpy("chunk_start")[0]), r.as_numpy("audio_chunk")) for e, r in events if e == "audio_chunk"]
    pos = 0
    for start, chunk in chunks:  # chunks tile the clip in order
        assert start == pos
        pos += chunk.shape[1]
    final = events[-1][1]
    audio = final.as_numpy("audio")
    assert pos == audio.shape[1] == 125 * 640
    assert np.array_equal(np.concatenate([c for _, c in chunks], axis=1), audio)  # final = the chunks
    # the streamed request equals the unary one with the same seed: same codes, and the chunks
    # (decoded in windows with context) match the unary one-shot decode at every seam
    unary = generate_http(triton, prompt=PROMPT, duration=2.5, seed=5)
    assert np.array_equal(unary["audio_codes"], final.as_numpy("audio_codes"))
    assert np.abs(unary["audio"] - audio).max() < 1e-4


def test_streaming_bad_input_gets_error(triton):
    events, error = stream(triton, prompt="  ", duration=1.0)
    assert error is not None and "prompt is empty" in str(error)


BAD = [
    (dict(prompt="", duration=1.0), "prompt is empty"),
    (dict(prompt="x" * 2500, duration=1.0), "prompt is too long"),
    (dict(prompt=PROMPT, duration=0.0), "duration"),
    (dict(prompt=PROMPT, duration=-2.0), "duration"),
    (dict(prompt=PROMPT, duration=121.0), "duration"),
    (dict(prompt=PROMPT, duration=math.inf), "finite"),
    (dict(prompt=PROMPT, duration=1.0, top_p=1.5), "top_p"),
    (dict(prompt=PROMPT, duration=1.0, top_k=-5), "top_k"),
    (dict(prompt=PROMPT, duration=1.0, temperature=0.0), "temperature"),
    (dict(prompt=PROMPT, duration=1.0, guidance_scale=0.5), "guidance_scale"),
    (dict(prompt=PROMPT, duration=1.0, temperature=math.nan), "finite"),
    (dict(prompt=PROMPT, duration=1.0, seed=-1), "seed"),
]


@pytest.mark.parametrize("params, message", BAD, ids=[m + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_input_is_refused_clearly(triton, params, message):
    with pytest.raises(InferenceServerException, match=re.escape(message)):
        generate_http(triton, **params)


def test_bad_input_types_and_shapes(triton):
    c = httpclient.InferenceServerClient(triton.http_endpoint)
    prompt = _inputs(httpclient, prompt=PROMPT)
    wrong_type = httpclient.InferInput("duration", [1], "FP64")
    wrong_type.set_data_from_numpy(np.array([1.0], np.float64))
    with pytest.raises(InferenceServerException, match="(?i)data-?type"):
        c.infer("musicgen", prompt + [wrong_type])
    wrong_shape = httpclient.InferInput("duration", [2], "FP32")
    wrong_shape.set_data_from_numpy(np.array([1.0, 2.0], np.float32))
    with pytest.raises(InferenceServerException, match="(?i)shape"):
        c.infer("musicgen", prompt + [wrong_shape])
    with pytest.raises(InferenceServerException, match="duration"):
        c.infer("musicgen", prompt)  # required input missing
    assert_healthy(triton)


def test_nan_literal_reaches_the_model_and_is_refused(triton):
    """Triton's JSON parser rejects the string "NaN"; a bare NaN literal reaches the model."""
    body = (
        '{"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]},'
        '{"name": "duration", "datatype": "FP32", "shape": [1], "data": [%s]}]}' % json.dumps(float("nan"))
    )
    req = urllib.request.Request(
        f"http://{triton.http_endpoint}/v2/models/musicgen/infer",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert "finite" in err.value.read().decode()
    assert_healthy(triton)


def test_server_stays_healthy_after_bad_inputs(triton):
    for params, _ in BAD:
        with pytest.raises(InferenceServerException):
            generate_grpc(triton, **params)
    assert_healthy(triton)


def test_eight_concurrent_requests_batch_and_match_solo_runs(triton):
    durations = [0.5, 1.0, 1.5, 0.8, 1.2, 0.6, 1.0, 0.9]
    with ThreadPoolExecutor(8) as pool:
        outs = list(
            pool.map(
                lambda i: generate_http(triton, prompt=f"{PROMPT} {i}", duration=durations[i], seed=100 + i), range(8)
            )
        )
    for d, out in zip(durations, outs):
        frames = int(d * 50)
        assert out["audio_codes"].shape == (4, frames) and out["audio"].shape == (1, frames * 640)
    # a seeded request gives the same codes alone as it did inside the batch
    for i in (0, 5):
        solo = generate_http(triton, prompt=f"{PROMPT} {i}", duration=durations[i], seed=100 + i)
        assert np.array_equal(solo["audio_codes"], outs[i]["audio_codes"])


def test_concurrent_good_and_bad_requests_do_not_disturb_each_other(triton):
    params = [
        dict(prompt=PROMPT, duration=1.0, seed=7),
        dict(prompt="", duration=1.0),
        dict(prompt=PROMPT, duration=1.0, seed=7),
        dict(prompt=PROMPT, duration=199.0),
    ]
    res = concurrently(generate_grpc, triton, params)
    assert isinstance(res[1], InferenceServerException) and isinstance(res[3], InferenceServerException)
    assert np.array_equal(res[0]["audio_codes"], res[2]["audio_codes"])


def test_info_model_returns_manifest(triton):
    c = httpclient.InferenceServerClient(triton.http_endpoint)
    m = json.loads(c.infer("musicgen_info", []).as_numpy("manifest")[0])
    assert m["random_weights"] is True and m["dims"]["num_codebooks"] == 4


def _metric(text, model):
    m = re.search(r'nv_inference_request_success\{model="%s",version="1"\} (\d+)' % model, text)
    return int(m.group(1)) if m else 0


def test_metrics_count_inferences(triton):
    url = triton.metrics_url
    before = _metric(urllib.request.urlopen(url, timeout=10).read().decode(), "musicgen")
    generate_http(triton, prompt=PROMPT, duration=0.2, seed=1)
    generate_grpc(triton, prompt=PROMPT, duration=0.2, seed=1)
    deadline = time.monotonic() + 10  # the ensemble's count can land after its response (seen once in CI)
    while True:
        after = _metric(urllib.request.urlopen(url, timeout=10).read().decode(), "musicgen")
        if after - before >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after - before == 2


def _gauge(srv, name, labels=""):
    text = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    pattern = (
        r"^%s\{%s\} ([0-9.e+]+)$" % (re.escape(name), labels)
        if labels
        else r"^%s(?:\{\})? ([0-9.e+]+)$" % re.escape(name)
    )
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


def test_cancelled_stream_leaves_the_batch_and_others_finish(triton):
    """A client that cancels mid-generation frees its place; a concurrent request is undisturbed."""
    import time

    cancelled_before = _gauge(triton, "musicgen_lm_requests_finished_total", 'outcome="cancelled"') or 0
    c = grpcclient.InferenceServerClient(triton.grpc_endpoint)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer("musicgen_stream", _inputs(grpcclient, prompt=PROMPT, duration=30.0, seed=1))
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(generate_http, triton, prompt=PROMPT, duration=1.0, seed=9)
        result, error = q.get(timeout=60)  # the stream is running
        assert error is None
        c.stop_stream(cancel_requests=True)
        deadline = time.time() + 20
        while (
            time.time() < deadline
            and (_gauge(triton, "musicgen_lm_requests_finished_total", 'outcome="cancelled"') or 0) <= cancelled_before
        ):
            time.sleep(0.1)
        assert (
            _gauge(triton, "musicgen_lm_requests_finished_total", 'outcome="cancelled"') or 0
        ) == cancelled_before + 1
        out = other.result(timeout=60)
    solo = generate_http(triton, prompt=PROMPT, duration=1.0, seed=9)
    assert np.array_equal(out["audio_codes"], solo["audio_codes"])
    deadline = time.time() + 10  # the engine publishes its metrics a few times a second
    while time.time() < deadline and _gauge(triton, "musicgen_lm_requests_in_flight") != 0:
        time.sleep(0.1)
    assert _gauge(triton, "musicgen_lm_requests_in_flight") == 0


def test_burst_of_concurrent_requests_keeps_the_server_up(triton):
    """Regression: metric updates from two threads crashed the python backend under load."""

    def one(i):
        call = generate_http if i % 2 else generate_grpc
        return call(triton, prompt=PROMPT, duration=0.2, seed=i)["audio_codes"].shape

    with ThreadPoolExecutor(6) as pool:
        shapes = list(pool.map(one, range(150)))
    assert shapes == [(4, 10)] * 150
    assert triton.is_running()
    assert_healthy(triton)


def test_engine_metric_reports_never_fail(triton):
    """Regression: the engine thread's first metrics report ran before the metrics existed (an
    AttributeError traceback in the server log at every start)."""
    generate_grpc(triton, prompt=PROMPT, duration=0.2, seed=3)
    log = triton.log_path.read_text(errors="replace")
    assert "in _report" not in log and "engine_metrics" not in log  # a failed report logs its traceback
