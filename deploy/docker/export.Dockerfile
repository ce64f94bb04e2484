# One-shot export container: fetches the checkpoint and writes the ONNX graphs into the models
# volume (see export-entrypoint.sh). Build context: repo root
#   docker build -f deploy/docker/export.Dockerfile -t musicgen/export .
# torch is needed here only; a CPU build is enough to export.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface

# The CPU wheel first, so the `export` extra's torch pin is already satisfied (2.13.0+cpu).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml ./
COPY musicgen_runtime ./musicgen_runtime
COPY export ./export
COPY model_repository ./model_repository
# Versions are pinned in pyproject.toml (the export extra).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[export]" \
    && python -c "import torch, transformers, onnx, export, musicgen_runtime; print('torch', torch.__version__)"

COPY deploy/docker/export-entrypoint.sh /usr/local/bin/musicgen-export
ENTRYPOINT ["/usr/local/bin/musicgen-export"]
