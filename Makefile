# charlm: every routine job is one make target. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= dev

.PHONY: help install proto proto-check lint test test-fast

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

lint: install  ## ruff and mypy on our code (generated stubs excluded)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy training service client scripts bench

test: install proto-check lint  ## the whole test suite (what CI runs)
	$(VENV)/bin/pytest -q

test-fast: install  ## the tests only, no lint
	$(VENV)/bin/pytest -q -x
