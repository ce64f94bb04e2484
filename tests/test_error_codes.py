"""Errors reach clients with the status that says whose fault they are, and without server internals.

Invalid input -> HTTP 400 / gRPC INVALID_ARGUMENT on the ensemble `musicgen` and on the stream
`musicgen_stream` (the error crosses BLS and the ensemble with its code), naming the input; no server
path or traceback in any message. The client and the CLI map them to their typed errors / exit codes.
A real tritonserver (the session's `triton` fixture), no mocks.
"""

from __future__ import annotations

import json
import math
import queue
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client import GenerationError, InvalidParameter, ModelNotReady, ServerUnavailable
from client.errors import classify
from cli_run import run_cli

ROOT = Path(__file__).resolve().parent.parent
# "/tmp/...", "/work/...", "/root/...": any absolute path; and Python's traceback markers
LEAK = re.compile(r"(^|[\s'\"(])/[\w.-]+/|Traceback|File \"")
BAD = [  # (inputs, the input the message must name)
    ({"prompt": "", "duration": 1.0}, "prompt"),
    ({"prompt": "   ", "duration": 1.0}, "prompt"),
    ({"prompt": "drums", "duration": -1.0}, "duration"),
    ({"prompt": "drums", "duration": 500.0}, "duration"),
    ({"prompt": "drums", "duration": float("nan")}, "duration"),
    ({"prompt": "drums", "duration": 1.0, "top_p": 2.0}, "top_p"),
    ({"prompt": "drums", "duration": 1.0, "temperature": 0.0}, "temperature"),
    ({"prompt": "drums", "duration": 1.0, "melody": [[0.1, -0.1] * 1600], "melody_sample_rate": 32000}, "melody"),
]
TYPES = {
    "prompt": "BYTES",
    "duration": "FP32",
    "top_p": "FP32",
    "temperature": "FP32",
    "melody": "FP32",
    "melody_sample_rate": "INT32",
}


def _http_infer(srv, model: str, inputs: dict) -> tuple[int, str]:
    """POST the JSON protocol by hand: a bare NaN literal reaches the model (tritonclient cannot send it)."""
    body = {
        "inputs": [
            {
                "name": n,
                "datatype": TYPES[n],
                "shape": list(np.shape(v)) or [1],
                "data": np.ravel(v).tolist() if np.ndim(v) else [v],
            }
            for n, v in inputs.items()
        ]
    }
    req = urllib.request.Request(
        f"{srv.http_url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def _grpc_inputs(inputs: dict):
    out = []
    for n, v in inputs.items():
        arr = np.array([v.encode()], dtype=object) if n == "prompt" else np.array(v if np.ndim(v) else [v])
        arr = arr.astype({"FP32": np.float32, "INT32": np.int32, "BYTES": object}[TYPES[n]])
        t = grpcclient.InferInput(n, list(arr.shape), TYPES[n])
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def _stream_error(srv, inputs: dict, headers: dict | None = None) -> InferenceServerException:
    c = grpcclient.InferenceServerClient(srv.grpc_endpoint)
    q: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put(error), headers=headers)
    try:
        c.async_stream_infer("musicgen_stream", _grpc_inputs(inputs), enable_empty_final_response=True)
        while True:
            error = q.get(timeout=60)
            if error is not None:
                return error
    finally:
        c.stop_stream()
        c.close()


def _assert_clean(message: str, name: str) -> None:
    assert name in message, message
    assert not LEAK.search(message), f"server internals in a client message: {message}"


@pytest.mark.parametrize("inputs,name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_invalid_input_is_400_and_invalid_argument(triton, inputs, name):
    status, msg = _http_infer(triton, "musicgen", inputs)
    assert status == 400, msg
    _assert_clean(msg, name)
    if any(isinstance(v, float) and math.isnan(v) for v in inputs.values()):
        return  # gRPC carries NaN as a number: the check above (HTTP, bare NaN literal) is the one that matters
    c = grpcclient.InferenceServerClient(triton.grpc_endpoint)
    with pytest.raises(InferenceServerException) as info:
        c.infer("musicgen", _grpc_inputs(inputs), client_timeout=60)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    _assert_clean(info.value.message(), name)
    # a stream's error message carries no code unless the stream asks for gRPC status errors
    _assert_clean(_stream_error(triton, inputs).message(), name)
    err = _stream_error(triton, inputs, {"triton_grpc_error": "true"})
    assert err.status() == "StatusCode.INVALID_ARGUMENT", err
    _assert_clean(err.message(), name)


def test_melody_refusal_names_no_path(triton):
    status, msg = _http_infer(triton, "musicgen", BAD[-1][0])
    assert status == 400 and "does not take a melody" in msg and not LEAK.search(msg), msg


def test_client_and_cli_map_server_codes(triton, tmp_path):
    from client import MusicGenClient

    with MusicGenClient(f"grpc://{triton.grpc_endpoint}", max_duration=1000) as c:
        with pytest.raises(InvalidParameter) as info:
            c.generate("drums", 500.0)
        assert "duration" in info.value.message and not LEAK.search(info.value.message)
    # the CLI: an input the server refuses -> exit 2 (usage / invalid parameter), message on stderr
    melody = tmp_path / "m.wav"
    from musicgen_runtime import audio_io

    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    melody.write_bytes(audio_io.encode_audio(tone[None], 16000, "wav"))
    r = run_cli(
        "generate",
        "drums",
        "--duration",
        "0.5",
        "--melody",
        melody,
        "--url",
        f"grpc://{triton.grpc_endpoint}",
        "-o",
        tmp_path / "o.wav",
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "does not take a melody" in r.stderr and not LEAK.search(r.stderr.replace(str(melody), "")), r.stderr


def test_classify_by_status_code():
    def exc(msg, status):
        return classify(InferenceServerException(msg, status=status), url="grpc://h:1", model="musicgen")

    assert isinstance(exc("in ensemble 'musicgen', invalid request: top_p ...", "400"), InvalidParameter)
    assert isinstance(exc("anything the server refused", "StatusCode.INVALID_ARGUMENT"), InvalidParameter)
    assert isinstance(exc("unavailable: the engine is restarting", "StatusCode.UNAVAILABLE"), ModelNotReady)
    assert isinstance(exc("Stub process 'lm_engine_0_0' is not healthy.", "503"), ModelNotReady)
    assert isinstance(exc("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), ServerUnavailable)
    assert isinstance(exc("internal error [1a2b3c4d] (details in the server log)", "500"), GenerationError)


def test_audio_decoder_chunks_through_triton_and_refuses_bad_chunks_with_400(triton):
    """audio_decoder's chunk-by-chunk mode as musicgen_stream calls it (two chunks, the state passed back)
    gives the clip's whole decode; a state it did not return, or codes not yet there, are INVALID_ARGUMENT."""
    c = grpcclient.InferenceServerClient(triton.grpc_endpoint)
    codes = np.random.default_rng(0).integers(0, 64, (4, 40)).astype(np.int64)

    def decode(frames, total=None, upto=None, state=None):
        arrays = {"audio_codes": codes[:, :frames], "clip_frames": total, "decode_to": upto, "codec_state": state}
        inputs = []
        for n, v in arrays.items():
            if v is not None:
                v = np.asarray([v] if np.ndim(v) == 0 else v)
                t = grpcclient.InferInput(n, list(v.shape), "FP32" if n == "codec_state" else "INT64")
                t.set_data_from_numpy(v.astype(np.float32 if n == "codec_state" else np.int64))
                inputs.append(t)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("audio", "codec_state")]
        r = c.infer("audio_decoder", inputs, outputs=outputs, client_timeout=60)
        return r.as_numpy("audio"), r.as_numpy("codec_state")

    whole, _ = decode(40)
    first, state = decode(24, 40, 20)
    second, _ = decode(40, 40, 40, state)
    assert np.abs(np.concatenate([first, second], axis=-1) - whole).max() < 1e-6
    for call, name in (
        (lambda: decode(40, 40, 40, np.zeros(5, np.float32)), "codec_state"),
        (lambda: decode(22, 40, 30, state), "codes"),
    ):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
        _assert_clean(info.value.message(), name)
