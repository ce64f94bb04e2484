# Triton with the MusicGen python models. Build context: the repository root
#   docker build -f deploy/docker/triton.Dockerfile -t musicgen/triton .
# Same server version as the tests (tritonserver 2.51.0 = NGC 24.10; CUDA 12.6, cuDNN 9,
# Ubuntu 22.04, Python 3.10). No torch: the models run the exported ONNX graphs.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# onnxruntime-gpu must match the image's CUDA 12 and Python 3.10:
# - PyPI onnxruntime-gpu 1.31 targets CUDA 13 (its wheel requires nvidia-cuda-runtime~=13.0 and
#   nvidia-cudnn-cu13): it cannot load its CUDA provider against this image's CUDA 12.6;
# - 1.24 and later publish no cp310 wheel;
# - 1.23.2 is the newest release built for CUDA 12.x + cuDNN 9 (requires *-cu12~=12.0,
#   nvidia-cudnn-cu12~=9.0) with a cp310 wheel. It loads the exported graphs (IR 8, opset 18;
#   it accepts IR <= 11 and opset <= 23; tests/deploy checks a fresh export against that).
ARG ONNXRUNTIME_GPU_VERSION=1.23.2

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml ./
COPY musicgen_runtime ./musicgen_runtime
COPY server ./server
COPY deploy/docker/runtime-requirements.py /tmp/runtime-requirements.py

# The runtime package (and the supervisor, server/) with its pinned core + `runtime` extra deps,
# onnxruntime-gpu in place of onnxruntime, and psutil (the supervisor's process checks). numpy stays 1.26.4: the python-backend stub of 24.10 crashes on BYTES inputs with numpy 2.
# --ignore-requires-python: the server side is tested on 3.11, the image's interpreter is 3.10; the
# code that runs here is kept 3.10-compatible (tests/deploy checks it).
RUN python3 /tmp/runtime-requirements.py pyproject.toml --gpu "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" --with psutil > /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir --no-deps --ignore-requires-python /src \
    && python3 -c "import numpy, onnxruntime, musicgen_runtime, server.supervisor; assert numpy.__version__ == '1.26.4', numpy.__version__; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()" \
    && if python3 -c "import torch" 2>/dev/null; then echo "torch must not be in the Triton image" >&2; exit 1; fi \
    && rm -rf /src /tmp/requirements.txt /tmp/runtime-requirements.py

WORKDIR /opt/tritonserver
EXPOSE 8000 8001 8002 8003
# The supervisor (server/supervisor.py) runs tritonserver, restarts it when a model's process dies or
# the engine stalls, and answers /livez and /readyz on 8003 (/readyz: every model READY and a real
# one-frame generation succeeded; /v2/health/ready stays 200 after a python stub has died).
# `python3 -m server drain` (the Kubernetes preStop) waits until no generation is in flight.
HEALTHCHECK --interval=15s --timeout=6s --start-period=600s --retries=5 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8003/readyz', timeout=4).status == 200 else 1)"]
# /models is the repository volume written by the export step (configs, model code, weights).
# Config files set no instance_group kind: Triton picks KIND_GPU here and the python models
# choose onnxruntime's CUDA provider. Arguments after `--` go to tritonserver.
CMD ["python3", "-m", "server", "run", "--tritonserver=/opt/tritonserver/bin/tritonserver", "--model-repository=/models", \
     "--address=0.0.0.0", "--work-dir=/tmp/triton", "--log-file=/dev/stdout", "--timeout=1800", \
     "--", "--strict-readiness=true", "--log-verbose=0"]
