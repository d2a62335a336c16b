# flowmetrics — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest
export FLOW_ENV ?= development

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "flowmetrics needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test,lint]'
	@touch $(STAMP)

install: $(STAMP) ## Create the venv and install flowmetrics with every extra the tests need

demo: $(STAMP) ## Run the whole pipeline on embedded defaults, feed it a dataset, print metrics (DEMO_EXIT=1 to exit after)
	$(BIN)/flowmetrics demo

up: $(STAMP) ## Run collectors + processor + API (embedded broker/PostgreSQL unless FLOW_* say otherwise)
	$(BIN)/flowmetrics up

test: $(STAMP) ## Run every test tier (unit, integration, e2e) against a real broker and real PostgreSQL
	$(PYTEST) tests/unit -q -p no:cacheprovider
	$(PYTEST) tests/integration -q -p no:cacheprovider
	$(PYTEST) tests/e2e -q -p no:cacheprovider

test-unit: $(STAMP) ## Unit tests only (no I/O)
	$(PYTEST) tests/unit -q

test-integration: $(STAMP) ## Integration and end-to-end tests (real broker, real PostgreSQL)
	$(PYTEST) tests/integration tests/e2e -q

lint: $(STAMP) ## ruff + mypy (strict on the packages)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

schemas: $(STAMP) ## Regenerate schemas/jsonschema/*.json from the event models
	$(BIN)/python -m schemas.jsonschema_gen

# The Faust peer gets a venv of its own: faust-streaming pins click<8.4, which the
# test extra's check-jsonschema (click>=8.5) cannot share.
FAUST_VENV ?= .venv-faust

$(FAUST_VENV)/.installed: bench/faust-requirements.txt
	$(PYTHON) -m venv $(FAUST_VENV)
	$(FAUST_VENV)/bin/python -m pip install --quiet -r bench/faust-requirements.txt
	@touch $@

bench: $(STAMP) $(FAUST_VENV)/.installed ## Benchmarks (not part of `make test`); results in bench/results/
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	FLOW_BENCH_FAUST_PYTHON=$(FAUST_VENV)/bin/python $(BIN)/python -m bench.run $(BENCH_ARGS)

clean: ## Remove the venv and caches
	rm -rf $(VENV) $(FAUST_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: help install demo up test test-unit test-integration lint schemas bench clean
