"""The light client install, for real: a fresh venv with only `pip install .[client]` (the package
index must be reachable) gets numpy 2 and no server runtime, and its `musicgen` command generates a
clip against the running tritonserver (tiny-random) that matches the full install's.

The first run downloads the wheels (numpy, grpcio, tritonclient, ...); pip's cache makes later runs fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgen_runtime import audio_io

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 1200  # seconds: a cold pip cache downloads ~60 MB of wheels
PROMPT = "calm lo-fi beat with warm piano"


def _run(cmd, timeout, **kw):
    """Run to the end (bounded); the caller asserts on the return code and says what failed."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False, **kw)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A venv holding the project installed with the `client` extra only, from a copy of the sources
    the client role ships (so the build cannot lean on anything else in the checkout)."""
    work = tmp_path_factory.mktemp("client-install")
    src = work / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    for pkg in ("musicgen_runtime", "client"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    p = _run([sys.executable, "-m", "venv", venv], timeout=300)
    assert p.returncode == 0, p.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    p = _run(
        [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q", f"{src}[client]"],
        timeout=PIP_TIMEOUT,
        env=env,
    )
    assert p.returncode == 0, f"pip install .[client] failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return venv


def _venv_env() -> dict:
    # no PYTHONPATH: the venv must run from what it installed, not from this checkout
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "MUSICGEN_"))}


def test_client_install_has_numpy_2_and_no_server_runtime(client_venv):
    py = client_venv / "bin" / "python"
    p = _run(
        [py, "-c", "import numpy, soundfile, tritonclient.grpc, client; print(numpy.__version__)"],
        timeout=120,
        env=_venv_env(),
        cwd=client_venv,
    )
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.strip().split(".")[0]) >= 2, f"numpy {p.stdout.strip()}: the client admits numpy 2"
    for heavy in ("onnxruntime", "tokenizers", "torch", "streamlit", "selenium"):
        p = _run([py, "-c", f"import {heavy}"], timeout=120, env=_venv_env(), cwd=client_venv)
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, f"{heavy} is installed with the client"
    p = _run([py, "-m", "pip", "show", "onnxruntime"], timeout=120, env=_venv_env(), cwd=client_venv)
    assert p.returncode != 0, "onnxruntime is installed with the client extra"


def test_client_install_generates_the_same_clip(client_venv, triton, tmp_path):
    out = tmp_path / "light.wav"
    p = _run(
        [
            client_venv / "bin" / "musicgen",
            "generate",
            PROMPT,
            "-d",
            "1",
            "--seed",
            "11",
            "--top-k",
            "1",
            "--url",
            triton.grpc_endpoint,
            "--out",
            out,
            "--progress",
        ],
        timeout=300,
        env=_venv_env(),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "ETA" in p.stderr, p.stderr
    assert p.stdout.startswith(f"wrote {out}: 1.00 s, 32000 Hz mono, seed 11"), p.stdout
    light, sr = audio_io.read_audio(out)
    assert sr == 32000 and light.shape == (1, 50 * 640)

    # the full install (this venv, numpy 1.26) writes the same clip for the same request
    from client import MusicGenClient

    with MusicGenClient(triton.grpc_endpoint) as c:
        ref = c.generate(PROMPT, 1.0, seed=11, top_k=1)
    full = tmp_path / "full.wav"
    ref.save(full, normalize="loudness")
    expected, _ = audio_io.read_audio(full)
    assert np.abs(light - expected).max() <= 2.0 / 32768  # 16-bit PCM: at most a rounding step apart


def test_page_install_resolves_without_server_runtime_or_test_tools(client_venv, tmp_path):
    """`.[ui]` (what the UI image installs) resolves to streamlit on numpy 2 with no onnxruntime,
    tokenizers, selenium, pytest or torch (pip's dry run: resolved, not installed)."""
    import json

    report = tmp_path / "ui-report.json"
    p = _run(
        [
            client_venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--dry-run",
            "--ignore-installed",
            "--report",
            report,
            f"{client_venv.parent / 'src'}[ui]",
        ],
        timeout=PIP_TIMEOUT,
        env=_venv_env(),
        cwd=tmp_path,
    )
    assert p.returncode == 0, f"pip could not resolve .[ui]:\n{p.stderr[-3000:]}"
    resolved = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert {"streamlit", "matplotlib", "tritonclient", "soundfile"} <= set(resolved), sorted(resolved)
    assert not {"onnxruntime", "tokenizers", "selenium", "pytest", "torch"} & set(resolved), sorted(resolved)
    assert int(resolved["numpy"].split(".")[0]) >= 2, resolved["numpy"]
