# charlm: every routine job is one make target. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= dev

.PHONY: help install proto proto-check server-env lint test test-fast test-training default-model

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)  ## create .venv and install charlm with EXTRAS (dev by default)

proto: install  ## regenerate the gRPC/protobuf stubs from proto/
	$(PY) scripts/gen_proto.py

proto-check: install  ## fail if the committed stubs drift from proto/
	$(PY) scripts/gen_proto.py --check

server-env: install  ## rewrite docker/server.env (the compose servers' settings) from charlm-serve's options
	$(PY) scripts/server_env.py

lint: install  ## ruff and mypy on our code (generated stubs excluded)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy training service client scripts bench

test: install proto-check lint  ## the whole test suite (what CI runs)
	$(VENV)/bin/pytest -q

test-fast: install  ## the tests only, no lint
	$(VENV)/bin/pytest -q -x

test-training: install  ## the training tests only (tiny models, about a minute on 2 cores)
	$(VENV)/bin/pytest -q tests/training

# The shipped model models/shakespeare/1: a 2-layer LSTM (hidden 256) with a fixed seed and a wall-clock
# budget, so a rebuild on another machine trains a different number of steps (see its MODEL_CARD.md).
# --threads 1: on a shared 2-core machine two torch threads are several times slower when other jobs run.
DEFAULT_TRAIN := train --corpus shakespeare --arch lstm --layers 2 --hidden-size 256 --embedding-size 64 \
	--batch-size 32 --seq-len 64 --lr 3e-3 --seed 1337 --max-seconds 720 --threads 1 \
	--out-dir runs/default-model --no-progress
default-model: install  ## retrain (about 12 min on a CPU) and re-export the shipped model models/shakespeare/1
	rm -rf runs/default-model
	$(VENV)/bin/charlm-train $(DEFAULT_TRAIN)
	rm -rf models/shakespeare/1
	$(VENV)/bin/charlm-train export runs/default-model/best.pt --repo models --name shakespeare --version 1 \
		--train-command "charlm-train $(DEFAULT_TRAIN)"

# Benchmarks (docs/performance.md): BENCH_ARGS passes options through, e.g. BENCH_ARGS=--quick.
.PHONY: bench-engine bench-serve
BENCH_ARGS ?=
bench-engine: install  ## the raw engine limit of the shipped model (onnxruntime steps, prefill, GEMM)
	$(PY) -m bench.engine $(BENCH_ARGS)

bench-serve: install  ## the real server under 1..256 streams beside the raw engine, baselines, soak (~3 min)
	$(PY) -m bench.serve $(BENCH_ARGS)

# Deployment (README "Quick start", docs/deployment.md).
.PHONY: demo compose-validate compose-test
demo:  ## fresh machine: install the server (no torch), serve the shipped model, stream a sample, stop
	$(MAKE) --no-print-directory install EXTRAS=server
	VENV=$(VENV) bash scripts/demo.sh

compose-validate: install  ## docker-compose.yml against docker-compose 1.29 and the Compose Specification
	command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
	for p in "" "--profile train" "--profile gpu"; do docker-compose $$p config -q || exit 1; done
	docker-compose -f docker-compose.yml -f docker-compose.ci.yml --profile train --profile gpu config -q
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.ci.yml

compose-test: install compose-validate  ## build the server image, run the compose stack under podman, stream, check /metrics
	VENV=$(VENV) bash scripts/compose_test.sh
