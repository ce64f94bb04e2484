# The Streamlit page (behind the proxy, which adds the password). Build context: repo root
#   docker build -f deploy/docker/ui.Dockerfile -t musicgen/ui .
# Talks to Triton over gRPC at $MUSICGEN_TRITON_URL (triton:8001 in the compose network).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MUSICGEN_TRITON_URL=triton:8001 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_HEADLESS=true

WORKDIR /app
COPY pyproject.toml ./
COPY musicgen_runtime ./musicgen_runtime
COPY client ./client
COPY ui ./ui

# Core + client + page only: no torch, no server runtime (onnxruntime, tokenizers), no test tools
# (selenium, pytest live in the `test` extra). Versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[client,ui]" \
    && python -c "import streamlit, tritonclient.grpc, client, musicgen_runtime" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the UI image" >&2; exit 1; fi \
    && for mod in onnxruntime tokenizers selenium pytest; do \
         if python -c "import $mod" 2>/dev/null; then echo "$mod must not be in the UI image" >&2; exit 1; fi; \
       done \
    && useradd --create-home --uid 10001 app

USER 10001
EXPOSE 8501
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status == 200 else 1)"]
CMD ["streamlit", "run", "ui/app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true", "--browser.gatherUsageStats=false"]
