"""The `musicgen` command end to end (subprocess) against a real tritonserver (tiny-random)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import MusicGenClient
from musicgen_runtime import audio_io
from server import find_free_port

BIN = Path(sys.executable).parent / "musicgen"


def run(*args, timeout=120):
    cmd = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "client.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSICGEN_")}
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_console_script_is_installed():
    assert BIN.exists(), "pip install -e . should install the `musicgen` console script"


def test_generate_streaming_with_progress_all_parameters(triton, tmp_path):
    out = tmp_path / "clip.wav"
    p = run(
        "generate",
        "lofi beat with warm piano",
        "--duration",
        "1.5",
        "--out",
        out,
        "--url",
        triton.grpc_endpoint,
        "--top-k",
        50,
        "--top-p",
        0.9,
        "--temperature",
        0.9,
        "--guidance-scale",
        2.5,
        "--seed",
        42,
        "--progress",
        "--codes-out",
        tmp_path / "codes.npy",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {out}: 1.50 s, 32000 Hz mono, seed 42"), p.stdout
    assert "generating [" in p.stderr and "100.0%" in p.stderr  # the bar, fed by the stream
    assert "ETA 0:00" in p.stderr  # the ETA (the page's, musicgen_runtime.progress) reaches 0 at the end
    assert "RANDOM weights" in p.stderr
    audio, sr = audio_io.read_audio(out)
    assert sr == 32000 and audio.shape == (1, 75 * 640)
    codes = np.load(tmp_path / "codes.npy")
    with MusicGenClient(triton.grpc_endpoint) as c:  # same parameters through the library: same clip
        ref = c.generate(
            "lofi beat with warm piano", 1.5, top_k=50, top_p=0.9, temperature=0.9, guidance_scale=2.5, seed=42
        )
    np.testing.assert_array_equal(codes, ref.codes)


def test_generate_http_json_flac_unnormalised(triton, tmp_path):
    out = tmp_path / "clip.flac"
    p = run(
        "generate",
        "calm pad",
        "-d",
        "1",
        "-o",
        out,
        "--url",
        f"http://{triton.http_endpoint}",
        "--seed",
        7,
        "--normalize",
        "none",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["path"] == str(out) and s["seed_used"] == 7 and s["streamed"] is False
    assert s["duration"] == 1.0 and s["random_weights"] is True and s["rtf"] > 0
    audio, _ = audio_io.read_audio(out)
    with MusicGenClient(f"http://{triton.http_endpoint}") as c:
        ref = c.generate("calm pad", 1.0, seed=7)
    assert np.abs(audio - np.clip(ref.audio, -1, 1)).max() <= 1 / 32768 + 1e-7


def test_prompt_in_chinese_is_warned_about_and_sent_as_typed(triton, tmp_path):
    from musicgen_runtime import prompt_language

    prompt = "轻松的钢琴曲，夜晚"
    p = run("generate", prompt, "-d", "0.5", "-o", tmp_path / "zh.wav", "--url", triton.grpc_endpoint, "--json")
    assert p.returncode == 0, p.stderr
    assert f"warning: {prompt_language.WARNING}" in p.stderr and p.stderr.count("trained on English") == 1
    assert json.loads(p.stdout)["prompt"] == prompt  # not translated
    p = run("generate", prompt, "-d", "0.5", "-o", tmp_path / "zh2.wav", "--url", triton.grpc_endpoint, "-q")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    p = run("generate", "calm piano", "-d", "0.5", "-o", tmp_path / "en.wav", "--url", triton.grpc_endpoint)
    assert p.returncode == 0 and "trained on English" not in p.stderr
    # the library says it as a Python warning
    with (
        MusicGenClient(triton.grpc_endpoint) as c,
        pytest.warns(prompt_language.PromptLanguageWarning, match="trained on English"),
    ):
        c.validate(prompt, 1.0)


def test_help_describes_loudness_eta_and_english_prompts():
    p = run("generate", "--help")
    text = " ".join(p.stdout.split())
    assert p.returncode == 0
    assert "-14 LUFS" in text and "ETA" in text and "English" in text and "not translated" in text


def test_no_stream_over_grpc_and_protocol_flag(triton, tmp_path):
    host, port = triton.http_endpoint.split(":")
    p = run(
        "generate",
        "drums",
        "-d",
        "0.5",
        "-o",
        tmp_path / "d.wav",
        "--url",
        f"{host}:{port}",
        "--protocol",
        "http",
        "-q",
    )
    assert p.returncode == 0 and p.stderr == "", p.stderr
    p = run(
        "generate",
        "drums",
        "-d",
        "0.5",
        "-o",
        tmp_path / "e.wav",
        "--url",
        triton.grpc_endpoint,
        "--no-stream",
        "--json",
    )
    assert p.returncode == 0 and json.loads(p.stdout)["streamed"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duration", "130"], "duration must be in (0, 120]"),
        (["--temperature", "0"], "temperature must be in"),
        (["--guidance-scale", "0.5"], "guidance_scale must be in"),
        (["--out", "x.aac"], "unsupported audio format '.aac'"),
    ],
)
def test_invalid_parameters_exit_2(triton, tmp_path, args, message):
    p = run("generate", "music", "--url", triton.grpc_endpoint, *args)
    assert p.returncode == 2 and message in p.stderr, (p.returncode, p.stderr)


def test_usage_errors_exit_2():
    p = run("generate")
    assert p.returncode == 2 and "required: prompt" in p.stderr
    p = run("generate", "x", "--top-k", "many")
    assert p.returncode == 2 and "invalid int value" in p.stderr
    p = run("frobnicate")
    assert p.returncode == 2
    p = run("--help")
    assert p.returncode == 0 and "generate" in p.stdout


def test_server_down_exits_3(tmp_path):
    dead = f"127.0.0.1:{find_free_port()}"
    for extra in ([], ["--protocol", "http"], ["--no-stream"]):
        p = run("generate", "music", "-d", "1", "-o", tmp_path / "x.wav", "--url", dead, *extra)
        assert p.returncode == 3 and "cannot reach the MusicGen server" in p.stderr, (extra, p.stderr)
        assert not (tmp_path / "x.wav").exists()
    p = run("health", "--url", dead)
    assert p.returncode == 3 and "unhealthy" in p.stderr
    p = run("models", "--url", f"http://{dead}")
    assert p.returncode == 3


def test_health_and_models(triton):
    p = run("health", "--url", triton.grpc_endpoint)
    assert p.returncode == 0 and p.stdout.startswith("ok:") and "tiny-random" in p.stdout, p.stderr
    p = run("health", "--url", f"http://{triton.http_endpoint}", "--json")
    h = json.loads(p.stdout)
    assert p.returncode == 0 and h["ok"] and h["generation_ok"] and h["random_weights"] is True
    p = run("models", "--url", triton.grpc_endpoint)
    assert p.returncode == 0 and "musicgen_stream" in p.stdout and "READY" in p.stdout
    assert "random weights: YES" in p.stdout
    p = run("models", "--url", f"http://{triton.http_endpoint}", "--json")
    m = json.loads(p.stdout)
    assert {x["name"] for x in m["models"]} >= {"musicgen", "musicgen_info"} and m["manifest"]["random_weights"]
