"""The container images, without a docker engine (none here): Dockerfile lint and rules, the GPU
image's requirements, the Python 3.10 the Triton image runs, and the export step for real
(tiny-random preset into a temp volume: graphs the pinned onnxruntime-gpu can load; cached)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import onnx
import pytest

from deploy.checks import DEPLOY_DIR, REPO_ROOT, tools

DOCKER = DEPLOY_DIR / "docker"
ORT_GPU = "1.23.2"
# onnxruntime 1.23 reads ONNX IR versions <= 11 and default-domain opsets <= 23.
ORT_MAX_IR, ORT_MAX_OPSET = 11, 23


def test_hadolint_passes():
    ok, out = tools.hadolint()
    assert ok, out


def test_hadolint_sees_problems(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install streamlit\n")
    ok, out = tools.hadolint([bad])
    assert not ok and "DL3006" in out  # untagged base image


def test_triton_image_is_the_tested_server_with_a_cuda12_onnxruntime_and_no_torch():
    text = (DOCKER / "triton.Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", text, re.M)
    assert f"ARG ONNXRUNTIME_GPU_VERSION={ORT_GPU}" in text
    assert "CUDA 13" in text and "CUDA 12" in text  # the comment says why this version
    assert '"onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"' in text
    assert "1.26.4" in text and "numpy.__version__ == '1.26.4'" in text
    assert "CUDAExecutionProvider" in text
    assert 'python3 -c "import torch"' in text  # the build fails if torch sneaks in
    pip_lines = [line for line in text.splitlines() if "pip install" in line]
    assert pip_lines and not any("torch" in line for line in pip_lines)
    assert '"--model-repository=/models"' in text


def test_ui_image_installs_client_and_ui_extras_without_torch():
    text = (DOCKER / "ui.Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[client,ui]"' in text
    assert "import streamlit, tritonclient.grpc" in text
    assert 'python -c "import torch"' in text and "torch" not in "".join(
        line for line in text.splitlines() if "pip install" in line
    )
    # the page's image carries neither the server runtime nor the test tools (the build fails if it does)
    refused = re.search(r"for mod in ([^;]+); do\s*\\?\s*if python -c \"import \$mod\"", text)
    assert refused and {"onnxruntime", "tokenizers", "selenium", "pytest"} <= set(refused.group(1).split())
    assert "ui/app.py" in text and "--server.port=8501" in text
    assert re.search(r"^USER 10001$", text, re.M)


def test_export_image_uses_the_cpu_torch_and_the_export_extra():
    text = (DOCKER / "export.Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert 'pip install --no-cache-dir ".[export]"' in text
    assert 'ENTRYPOINT ["/usr/local/bin/musicgen-export"]' in text


@pytest.mark.parametrize("name", ["triton", "ui", "export", "token-auth"])
def test_dockerignore_admits_what_each_image_copies_and_no_weights(name):
    df = (DOCKER / f"{name}.Dockerfile").read_text()
    ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore, "deny everything by default, then admit what the image copies"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for src in re.findall(r"^COPY (\S+) ", df, re.M):
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{name}: COPY {src} is ignored"
    if "model_repository" in allowed:
        assert "model_repository/*/1/*.onnx" in ignore and "model_repository/*/1/*.onnx.data" in ignore


def _runtime_requirements():
    spec = importlib.util.spec_from_file_location("runtime_requirements", DOCKER / "runtime-requirements.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_requirements_follow_pyproject():
    mod = _runtime_requirements()
    text = (REPO_ROOT / "pyproject.toml").read_text()
    reqs = mod.gpu_requirements(text, f"onnxruntime-gpu=={ORT_GPU}")
    names = [mod.requirement_name(r) for r in reqs]
    core = [mod.requirement_name(r) for r in mod.core_dependencies(text)]
    runtime = [mod.requirement_name(r) for r in mod.extra_dependencies(text, "runtime")]
    assert "onnxruntime" not in core, "the core (every role) must stay free of the server runtime"
    assert "onnxruntime" in runtime and "onnxruntime" not in names
    assert names[-1] == "onnxruntime-gpu" and reqs[-1] == f"onnxruntime-gpu=={ORT_GPU}"
    assert set(core + runtime) - {"onnxruntime"} == set(names) - {"onnxruntime-gpu"}
    assert len(names) == len(set(names)), "one requirement per package"
    assert "numpy==1.26.4" in reqs  # the runtime's pin wins over the core's range
    assert all("==" in r for r in reqs), "every requirement of the GPU image is pinned"
    # the script itself, as the Dockerfile runs it
    out = subprocess.run(
        [
            "python3",
            str(DOCKER / "runtime-requirements.py"),
            str(REPO_ROOT / "pyproject.toml"),
            "--gpu",
            f"onnxruntime-gpu=={ORT_GPU}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == reqs
    # the supervisor's psutil, pinned as in the serve extra
    out = subprocess.run(
        [
            "python3",
            str(DOCKER / "runtime-requirements.py"),
            str(REPO_ROOT / "pyproject.toml"),
            "--gpu",
            f"onnxruntime-gpu=={ORT_GPU}",
            "--with",
            "psutil",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == [*reqs, mod.pinned(text, "psutil")] and mod.pinned(text, "psutil").startswith("psutil==")


def test_gpu_requirements_refuse_a_pyproject_without_onnxruntime(tmp_path):
    mod = _runtime_requirements()
    with pytest.raises(SystemExit):
        mod.gpu_requirements('[project]\ndependencies = [\n    "numpy==1.26.4",\n]\n', "onnxruntime-gpu==1.23.2")
    with pytest.raises(SystemExit):
        mod.gpu_requirements(
            '[project]\ndependencies = [\n    "numpy>=1.26",\n]\n\n'
            '[project.optional-dependencies]\nruntime = [\n    "numpy==1.26.4",\n]\n',
            "onnxruntime-gpu==1.23.2",
        )


def _triton_side_python_files():
    files = sorted((REPO_ROOT / "musicgen_runtime").rglob("*.py")) + sorted(REPO_ROOT.glob("model_repository/*/1/*.py"))
    files += sorted((REPO_ROOT / "server").glob("*.py"))  # the container's entrypoint (supervisor)
    files += [DOCKER / "runtime-requirements.py", DEPLOY_DIR / "host" / "smoke.py"]
    # the client and the page declare Python 3.10-3.13 (pyproject.toml): the same check holds for them
    files += sorted((REPO_ROOT / "client").glob("*.py")) + sorted((REPO_ROOT / "ui").glob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


PY311_ONLY_MODULES = {"tomllib", "wsgiref.types"}
PY311_ONLY_NAMES = re.compile(
    r"\b(typing\.Self|from typing import [^\n]*\bSelf\b|datetime\.UTC|from datetime import [^\n]*\bUTC\b|"
    r"asyncio\.TaskGroup|asyncio\.timeout\(|enum\.StrEnum|from enum import [^\n]*\bStrEnum\b|"
    r"ExceptionGroup|typing\.LiteralString|typing\.Never|typing\.assert_never|typing\.reveal_type)"
)


@pytest.mark.parametrize("path", _triton_side_python_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_code_in_the_triton_image_runs_on_python_3_10(path):
    """tritonserver:24.10 runs the python models with Ubuntu 22.04's Python 3.10."""
    src = path.read_text()
    tree = ast.parse(src, feature_version=(3, 10))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not set(mods) & PY311_ONLY_MODULES, f"{path.name} imports a 3.11-only module {mods}"
    m = PY311_ONLY_NAMES.search(src)
    assert not m, f"{path.name} uses {m.group(0)!r}, new in Python 3.11"


def test_export_step_writes_loadable_graphs_once(tmp_path):
    """export-entrypoint.sh for real, on the tiny-random preset, into a fresh 'volume'."""
    volume = tmp_path / "models"
    env = {
        **os.environ,
        "MUSICGEN_REPOSITORY": str(volume),
        "MUSICGEN_MODEL_REPOSITORY_SRC": str(REPO_ROOT / "model_repository"),
        "MUSICGEN_CHECKPOINT": "tiny-random",
        "MUSICGEN_PRECISION": "fp16",
        "MUSICGEN_SOURCE_COMMIT": "abc123",
        "PYTHON": str(Path(os.sys.executable)),
        "HF_HUB_OFFLINE": "1",
    }
    script = DOCKER / "export-entrypoint.sh"
    r = subprocess.run(["bash", "-e", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for model_dir in (REPO_ROOT / "model_repository").iterdir():
        if model_dir.is_dir() and not model_dir.name.startswith(("_", ".")):
            assert (volume / model_dir.name / "1").is_dir(), f"{model_dir.name} has no version dir in the volume"
            if (model_dir / "config.pbtxt").exists():
                assert (volume / model_dir.name / "config.pbtxt").read_bytes() == (
                    model_dir / "config.pbtxt"
                ).read_bytes()
    graphs = sorted(volume.rglob("*.onnx"))
    assert graphs, "the export wrote no graph"
    for g in graphs:
        m = onnx.load(str(g), load_external_data=False)
        opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
        assert m.ir_version <= ORT_MAX_IR, f"{g.name}: IR {m.ir_version} is too new for onnxruntime-gpu {ORT_GPU}"
        assert opset <= ORT_MAX_OPSET, f"{g.name}: opset {opset} is too new for onnxruntime-gpu {ORT_GPU}"
    assert (volume / ".musicgen-export").read_text().strip() == "tiny-random fp16 abc123"
    # cached: a second run does nothing, without importing torch
    t0 = time.monotonic()
    r2 = subprocess.run(["bash", "-e", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r2.returncode == 0 and "nothing to do" in r2.stdout
    assert time.monotonic() - t0 < 2


def test_export_step_refreshes_model_code_and_drops_stale_models(tmp_path):
    """With a stand-in for `python -m export` (the real one ran above): configs and code are copied
    again when the source commit changes, and models gone from the source leave the volume."""
    volume = tmp_path / "models"
    (volume / "stale_model" / "1").mkdir(parents=True)
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "export $*" >> "$MUSICGEN_REPOSITORY/calls"\n')
    fake_python.chmod(0o755)
    env = {
        **os.environ,
        "MUSICGEN_REPOSITORY": str(volume),
        "PYTHON": str(fake_python),
        "MUSICGEN_MODEL_REPOSITORY_SRC": str(REPO_ROOT / "model_repository"),
        "MUSICGEN_CHECKPOINT": "tiny-random",
        "MUSICGEN_SOURCE_COMMIT": "c1",
    }
    script = DOCKER / "export-entrypoint.sh"
    assert subprocess.run(["bash", "-e", str(script)], env=env, capture_output=True).returncode == 0
    assert not (volume / "stale_model").exists()
    assert (
        "--precision fp16" in (volume / "calls").read_text() and "--skip-if-current" in (volume / "calls").read_text()
    )
    assert subprocess.run(["bash", "-e", str(script)], env=env, capture_output=True).returncode == 0
    assert len((volume / "calls").read_text().splitlines()) == 1, "same commit: nothing to do"
    assert (
        subprocess.run(
            ["bash", "-e", str(script)], env={**env, "MUSICGEN_SOURCE_COMMIT": "c2"}, capture_output=True
        ).returncode
        == 0
    )
    assert len((volume / "calls").read_text().splitlines()) == 2, "new commit: export again"


def test_export_step_rejects_bad_settings(tmp_path):
    env = {
        **os.environ,
        "MUSICGEN_REPOSITORY": str(tmp_path / "v"),
        "MUSICGEN_CHECKPOINT": "$(id)",
        "MUSICGEN_MODEL_REPOSITORY_SRC": str(REPO_ROOT / "model_repository"),
    }
    r = subprocess.run(["bash", "-e", str(DOCKER / "export-entrypoint.sh")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "MUSICGEN_CHECKPOINT" in r.stderr
    assert not (tmp_path / "v").exists()
