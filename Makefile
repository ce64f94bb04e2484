# The commands a person types. `make run` brings the product up; `make test` is what CI runs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKPOINT ?= facebook/musicgen-small
PRECISION ?= fp32
REPO ?= model_repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
UI_PORT ?= 8501

.PHONY: setup export verify serve stop run ui test test-fast deploy-check bench bench-quick clean

# Idempotent: reinstalls only when pyproject.toml changed since the last install.
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[export,serve,client,test,deploy]'
	touch $(STAMP)

# Export a checkpoint (HF dir, hub id or preset) into the model repository.
export: setup
	$(BIN)/python -m export build --checkpoint $(CHECKPOINT) --precision $(PRECISION) --repository $(REPO)

verify: setup
	$(BIN)/python -m export verify --repository $(REPO)

serve: setup
	$(BIN)/python -m server start --repository $(REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

stop:
	$(BIN)/python -m server stop

# The product: setup, export (falls back to tiny-random, loudly, when the hub is unreachable), serve.
run: setup
	$(BIN)/python -m export build --checkpoint $(CHECKPOINT) --precision $(PRECISION) --repository $(REPO) --fallback tiny-random --skip-if-current
	$(MAKE) serve

test: setup
	$(BIN)/python -m pytest -q tests

# Offline checks of deploy/ (shellcheck, ROS/Terraform/compose/cloud-init, bootstrap dry run).
# Also part of `make test`; no cloud account or docker engine is needed.
deploy-check: setup
	$(BIN)/python -m pytest -q tests/deploy

clean:
	rm -rf build .pytest_cache
