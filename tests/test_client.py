"""The client library against a real tritonserver (tiny-random): unary over HTTP and gRPC, streaming,
health, model information, errors (server down, bad parameter, unknown model, timeout), files."""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from client import (
    GenerationError,
    InvalidParameter,
    ModelNotReady,
    MusicGenClient,
    RequestTimeout,
    ServerUnavailable,
    classify,
    parse_url,
)
from musicgen_runtime import audio_io
from server import find_free_port

PROMPT = "lofi hip hop beat with mellow piano"


@pytest.fixture(scope="module")
def clients(triton):
    g = MusicGenClient(f"grpc://{triton.grpc_endpoint}", timeout=120)
    h = MusicGenClient(f"http://{triton.http_endpoint}", timeout=120)
    yield {"grpc": g, "http": h}
    g.close()
    h.close()


@pytest.fixture(scope="module")
def dead_endpoint():
    return f"127.0.0.1:{find_free_port()}"  # nothing listens there


# ---- no server needed ---------------------------------------------------------------------------


def test_parse_url():
    assert parse_url(None) == ("localhost:8001", "grpc")
    assert parse_url(None, "http") == ("localhost:8000", "http")
    assert parse_url("grpc://10.0.0.5:9001") == ("10.0.0.5:9001", "grpc")
    assert parse_url("http://example:8080/") == ("example:8080", "http")
    assert parse_url("myhost", "http") == ("myhost:8000", "http")
    assert parse_url("[::1]:8001") == ("[::1]:8001", "grpc")
    from client import parse_server_url

    assert parse_server_url("grpcs://music.example.com") == ("music.example.com:443", "grpc", True)
    assert parse_server_url("https://203.0.113.10:8443/") == ("203.0.113.10:8443", "http", True)
    assert parse_server_url("grpc://h:9001") == ("h:9001", "grpc", False)
    assert parse_url("https://h") == ("h:443", "http")
    for bad in ("ftp://x:1", "http://x:1/v2", "x:notaport", "grpcx://x:1"):
        with pytest.raises(InvalidParameter):
            parse_url(bad)
    with pytest.raises(InvalidParameter, match="URL says http"):
        parse_url("http://x:1", "grpc")


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(duration=0), "duration"),
        (dict(duration=121), "duration"),
        (dict(duration=float("nan")), "duration"),
        (dict(duration=1, top_k=-1), "top_k"),
        (dict(duration=1, top_p=1.5), "top_p"),
        (dict(duration=1, temperature=0), "temperature"),
        (dict(duration=1, guidance_scale=0.5), "guidance_scale"),
        (dict(duration=1, seed=-1), "seed"),
        (dict(duration=1, seed=2**63), "seed"),
    ],
)
def test_client_side_validation_names_the_parameter_before_any_network(dead_endpoint, kw, name):
    c = MusicGenClient(dead_endpoint, max_duration=30)  # would raise ServerUnavailable if it sent anything
    with pytest.raises(InvalidParameter, match=name):
        c.generate(PROMPT, **kw)
    with pytest.raises(InvalidParameter, match="prompt"):
        c.generate("   ", 1.0)


def test_classify_triton_messages():
    def exc(msg, status=None):
        return classify(InferenceServerException(msg, status=status), url="grpc://h:1", model="musicgen")

    assert isinstance(exc("in ensemble 'musicgen', invalid request: top_p must be in [0, 1]"), InvalidParameter)
    assert "top_p must be in [0, 1]" in exc("in ensemble 'musicgen', invalid request: top_p must be in [0, 1]").message
    assert isinstance(exc("unexpected datatype TYPE_FP64 for inference input 'duration'"), InvalidParameter)
    assert isinstance(exc("Request for unknown model: 'musicgen' is not found"), ModelNotReady)
    assert isinstance(exc("Stub process 'lm_engine_0_0' is not healthy."), ModelNotReady)
    assert isinstance(exc("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), ServerUnavailable)
    assert isinstance(exc("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), RequestTimeout)
    assert isinstance(exc("RuntimeError: decoder step failed: boom"), GenerationError)
    assert isinstance(classify(ConnectionRefusedError(111, "Connection refused")), ServerUnavailable)
    # a load balancer's answers when the replica serving the request died (tests/test_failover.py)
    bad_gateway = exc(
        "an exception occurred in the client while decoding the response: Parse error at offset 0: "
        "<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response."
    )
    assert isinstance(bad_gateway, ServerUnavailable) and "502 Bad Gateway" in bad_gateway.message
    assert "<html>" not in bad_gateway.message
    assert isinstance(exc("connection closed."), ServerUnavailable)
    assert isinstance(
        exc("Stream removed (Data frame with END_STREAM flag received)", "StatusCode.UNKNOWN"), ServerUnavailable
    )


# ---- against the server ---------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_unary_generate(clients, proto):
    r = clients[proto].generate(PROMPT, 1.0, seed=3)
    assert r.audio.dtype == np.float32 and r.audio.shape == (1, 50 * 640)
    assert r.sample_rate == 32000 and r.channels == 1 and r.duration == pytest.approx(1.0)
    assert r.codes.dtype == np.int64 and r.codes.shape == (4, 50)
    assert r.seed_used == 3 and r.elapsed > 0 and r.rtf == pytest.approx(r.elapsed)
    assert r.params.top_k == 250 and r.params.guidance_scale == 3.0 and r.time_to_first_chunk is None
    assert np.isfinite(r.audio).all()


def test_same_seed_same_codes_across_protocols_and_random_seed_reproduces(clients):
    kw = dict(top_k=50, top_p=0.9, temperature=0.8, guidance_scale=2.0)
    a = clients["http"].generate(PROMPT, 0.5, seed=11, **kw)
    b = clients["grpc"].generate(PROMPT, 0.5, seed=11, **kw)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.audio, b.audio)
    c = clients["grpc"].generate(PROMPT, 0.5)  # random seed, reported
    d = clients["http"].generate(PROMPT, 0.5, seed=c.seed_used)
    np.testing.assert_array_equal(c.codes, d.codes)


def test_stream_progress_chunks_then_final(clients):
    events = list(clients["grpc"].stream(PROMPT, 2.5, seed=5))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert "progress" in kinds and "audio_chunk" in kinds
    done = [e.frames_done for e in events]
    assert done == sorted(done) and all(e.frames_total == 125 for e in events)
    final = events[-1].result
    assert final.audio.shape == (1, 125 * 640) and final.codes.shape == (4, 125) and final.seed_used == 5
    chunks = [e for e in events if e.kind == "audio_chunk"]
    assert chunks[0].chunk_start == 0
    starts = [c.chunk_start for c in chunks]
    ends = [c.chunk_start + c.audio.shape[1] for c in chunks]
    assert starts[1:] == ends[:-1] and ends[-1] == final.audio.shape[1]  # the chunks tile the clip
    np.testing.assert_array_equal(np.concatenate([c.audio for c in chunks], axis=1), final.audio)
    assert 0 < final.time_to_first_chunk <= final.elapsed
    unary = clients["grpc"].generate(PROMPT, 2.5, seed=5)
    np.testing.assert_array_equal(unary.codes, final.codes)
    # the codec carries its state from chunk to chunk: the stream's audio is the clip decoded whole
    assert len(chunks) >= 3 and np.abs(final.audio - unary.audio).max() < 1e-6 * max(1.0, np.abs(unary.audio).max())


def test_generate_with_stream_callback_and_http_refuses_streaming(clients):
    seen = []
    r = clients["grpc"].generate(PROMPT, 1.0, seed=2, stream=True, on_event=seen.append)
    assert seen[-1].kind == "final" and seen[-1].result is r and r.time_to_first_chunk is not None
    with pytest.raises(InvalidParameter, match="gRPC"):
        clients["http"].generate(PROMPT, 1.0, stream=True)


def test_leaving_a_stream_early_cancels_it_and_the_server_stays_healthy(clients):
    threads = threading.active_count()
    for seed in range(5):
        for event in clients["grpc"].stream(PROMPT, 5.0, seed=seed):
            if event.kind == "progress":
                break
    assert clients["grpc"].generate(PROMPT, 0.2, seed=1).codes.shape == (4, 10)
    # no thread left behind per cancelled stream (grpc's request sender waited forever)
    assert threading.active_count() <= threads + 1, threading.enumerate()


def test_server_side_rejection_maps_to_invalid_parameter(triton):
    # the client's own limit is lifted so the request reaches the server, which refuses it by name
    for url in (f"grpc://{triton.grpc_endpoint}", f"http://{triton.http_endpoint}"):
        with MusicGenClient(url, max_duration=1000) as c:
            with pytest.raises(InvalidParameter, match="duration must be in"):
                c.generate(PROMPT, 500.0)
    with MusicGenClient(f"grpc://{triton.grpc_endpoint}", max_duration=1000) as c:
        with pytest.raises(InvalidParameter, match="duration"):
            list(c.stream(PROMPT, 500.0))


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_server_down_is_server_unavailable(dead_endpoint, proto):
    with MusicGenClient(f"{proto}://{dead_endpoint}", timeout=5, connect_timeout=2) as c:
        with pytest.raises(ServerUnavailable, match="cannot reach"):
            c.generate(PROMPT, 1.0)
        with pytest.raises(ServerUnavailable):
            c.models()
        if proto == "grpc":
            with pytest.raises(ServerUnavailable):
                list(c.stream(PROMPT, 1.0))
        rep = c.health()
        assert not rep.ok and rep.error_kind == "ServerUnavailable" and not rep.live


def _bounded(fn, bound: float = 120.0):
    """Run ``fn`` on a thread; what it returned or raised, or a failure if it still runs after ``bound`` s
    (the client's timeout below is 600 s: only a wait on the server that nothing bounds reaches it)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    assert not t.is_alive(), f"still waiting after {bound:g} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_stream_never_waits_on_a_frozen_or_killed_server(tiny_repo):
    """A real tritonserver frozen (SIGSTOP) right after a stream's final response: leaving the stream
    does not wait for the server to end the RPC (tritonclient's close would, until the stream's
    timeout). Then killed (SIGKILL) mid-stream: the stream ends with ServerUnavailable, not at its
    timeout."""
    from server import TritonServer

    # supervised for its start (started again if it aborts while loading), checks an hour apart: this
    # test freezes and kills the server itself
    with TritonServer(tiny_repo, supervisor_options={"interval": 3600}) as srv:
        url = f"grpc://{srv.grpc_endpoint}"
        with MusicGenClient(url, timeout=600, connect_timeout=2) as c:

            def until_final_then_freeze():
                kinds = []
                for event in c.stream(PROMPT, 0.5, seed=1):
                    kinds.append(event.kind)
                    if event.kind == "final":
                        os.kill(srv.pid, signal.SIGSTOP)
                return kinds

            try:
                assert _bounded(until_final_then_freeze)[-1] == "final"
            finally:
                os.kill(srv.pid, signal.SIGCONT)

            def kill_at_first_event():
                for _ in c.stream(PROMPT, 30.0, seed=2):
                    os.kill(srv.pid, signal.SIGKILL)

            with pytest.raises(ServerUnavailable):
                _bounded(kill_at_first_event)


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_unknown_model_is_model_not_ready_and_timeout_is_request_timeout(triton, proto):
    ep = triton.grpc_endpoint if proto == "grpc" else triton.http_endpoint
    with MusicGenClient(f"{proto}://{ep}", model="no_such_model") as c:
        with pytest.raises(ModelNotReady, match="no_such_model"):
            c.generate(PROMPT, 1.0)
        rep = c.health()
        assert not rep.ok and rep.error_kind == "ModelNotReady"
    with MusicGenClient(f"{proto}://{ep}", timeout=0.05) as c:
        with pytest.raises(RequestTimeout):
            c.generate(PROMPT, 30.0, seed=1)


def test_health_models_and_manifest(clients):
    for c in clients.values():
        rep = c.health()
        assert rep.ok, rep.as_dict()
        assert rep.live and rep.ready and rep.generation_ok and rep.generation_seconds > 0
        assert rep.random_weights is True and rep.models["musicgen"] == "READY"
        names = {m["name"]: m for m in c.models()}
        assert {"musicgen", "musicgen_stream", "musicgen_info", "lm_engine"} <= set(names)
        assert all(m["state"] == "READY" for m in names.values())
        m = c.info()
        assert m["source"] == "tiny-random" and m["random_weights"] is True and m["dims"]["sample_rate"] == 32000
        assert "checkpoint_path" not in m and "/" not in json.dumps(m), "a server path reached the client"
        assert c.is_random_weights() is True
        assert c.max_duration == 120.0


def test_one_client_shared_by_threads(clients):
    threads_before = threading.active_count()  # what earlier tests left running is not this client's
    for c in clients.values():
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda s: c.generate(PROMPT, 0.4, seed=s), range(4)))
        assert [r.seed_used for r in results] == [0, 1, 2, 3]
        solo = c.generate(PROMPT, 0.4, seed=2)
        np.testing.assert_array_equal(solo.codes, results[2].codes)
    assert threading.active_count() - threads_before < 20, [t.name for t in threading.enumerate()]


def test_saving_results(clients, tmp_path):
    r = clients["grpc"].generate(PROMPT, 1.0, seed=9)
    y, sr = audio_io.read_audio(r.save(tmp_path / "exact.wav", subtype="FLOAT"))
    assert sr == 32000
    np.testing.assert_array_equal(y, r.audio)
    y, _ = audio_io.read_audio(r.save(tmp_path / "a.flac"))
    assert np.abs(y - np.clip(r.audio, -1, 1)).max() <= 1 / 32768 + 1e-7
    y, _ = audio_io.read_audio(r.save(tmp_path / "loud.wav", normalize="loudness"))
    if np.sqrt(np.mean(r.audio.astype(np.float64) ** 2)) >= 2e-3:
        assert audio_io.loudness(y, sr) <= -14.0 + 0.1 and np.abs(y).max() <= 10 ** (-1 / 20) + 1e-4
    if "mp3" in audio_io.writable_formats():
        y, _ = audio_io.read_audio(r.save(tmp_path / "a.mp3", normalize="peak"))
        assert y.shape[0] == 1 and y.shape[1] > 0.9 * r.audio.shape[1]
    assert audio_io.read_audio(r.to_bytes("wav"))[0].shape == r.audio.shape
