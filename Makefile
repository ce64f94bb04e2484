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

.PHONY: setup export verify serve stop run ui lint test chaos-soak deploy-check bench bench-short bench-quick clean

# Idempotent: reinstalls only when pyproject.toml changed since the last install; then builds our CPU
# kernel library for ONNX Runtime (musicgen_runtime/cpu_kernels, gcc) unless it is current.
setup: $(STAMP)
	$(BIN)/python -m musicgen_runtime.cpu_kernels
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[runtime,export,serve,client,ui,test,deploy,bench]'
	touch $(STAMP)

# Export a checkpoint (HF dir, hub id or preset) into the model repository.
export: setup
	$(BIN)/python -m export build --checkpoint $(CHECKPOINT) --precision $(PRECISION) --repository $(REPO)

verify: setup
	$(BIN)/python -m export verify --repository $(REPO)

HEALTH_PORT ?= 8003
# Triton under its supervisor (restarts it when a model's process dies or the engine stalls);
# /livez and /readyz on HEALTH_PORT (docs/operations.md).
serve: setup
	$(BIN)/python -m server start --repository $(REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --health-port $(HEALTH_PORT)

stop:
	$(BIN)/python -m server stop

# The product: setup, export (falls back to tiny-random, loudly, when the hub is unreachable),
# Triton in the background, then the web page in the foreground (Ctrl-C stops the page,
# `make stop` stops Triton).
run: setup
	$(BIN)/python -m export build --checkpoint $(CHECKPOINT) --precision $(PRECISION) --repository $(REPO) --fallback tiny-random --skip-if-current
	$(MAKE) serve
	@echo "Web page: http://127.0.0.1:$(UI_PORT)   (Ctrl-C stops the page; 'make stop' stops Triton)"
	$(MAKE) ui

# The web page on http://127.0.0.1:$(UI_PORT), talking to the server over gRPC ($MUSICGEN_TRITON_URL).
MUSICGEN_TRITON_URL ?= 127.0.0.1:$(GRPC_PORT)
ui: setup
	MUSICGEN_TRITON_URL=$(MUSICGEN_TRITON_URL) $(BIN)/python -m streamlit run ui/app.py --server.headless true \
		--server.address 127.0.0.1 --server.port $(UI_PORT) --browser.gatherUsageStats false \
		--client.toolbarMode viewer

# ruff (settings in pyproject.toml): lint, and the formatting check
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q tests

# The chaos test's long form: mixed clients for CHAOS_SECONDS before each fault (engine stub killed,
# engine stalled, tritonserver killed) and after the last; figures in build/chaos-soak.json.
CHAOS_SECONDS ?= 300
chaos-soak: setup
	mkdir -p build
	MUSICGEN_CHAOS_SECONDS=$(CHAOS_SECONDS) MUSICGEN_CHAOS_REPORT=build/chaos-soak.json \
		$(BIN)/python -m pytest -q -s tests/test_chaos.py

# Offline checks of deploy/ (shellcheck, ROS/Terraform/compose/cloud-init, Kubernetes overlays, bootstrap dry run).
# Also part of `make test`; no cloud account or docker engine is needed.
deploy-check: setup
	$(BIN)/python -m pytest -q tests/deploy

# Benchmarks (bench/README.md): our server vs transformers on the same checkpoint and machine.
# `make bench` (small-random) runs for many minutes on 2 cores; `make bench-short` (small-random int8) gives
# the same ratios (results.json `ratios`) in about 5 minutes; `make bench-quick` is the CI smoke run (tiny-random).
BENCH_CHECKPOINT ?= small-random
BENCH_ARGS ?=
bench: setup
	$(BIN)/python -m bench --checkpoint $(BENCH_CHECKPOINT) --precision $(PRECISION) $(BENCH_ARGS)

bench-short: setup
	$(BIN)/python -m bench --short $(BENCH_ARGS)

bench-quick: setup
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache
