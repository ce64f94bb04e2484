# The API token check (deploy/auth/token_auth.py: standard library only) as an image, for the
# Kubernetes deployment (deploy/kubernetes/base/token-auth.yaml). Build context: repo root
#   docker build -f deploy/docker/token-auth.Dockerfile -t musicgen/token-auth .
# Arguments are token_auth.py's: --tokens FILE serve --listen 0.0.0.0:9100
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY deploy/auth/token_auth.py /app/token_auth.py
USER 10001
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=6s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["python", "/app/token_auth.py"]
CMD ["--tokens", "/etc/musicgen/tokens/tokens", "serve", "--listen", "0.0.0.0:9100"]
