# ftexp — every target installs what it needs into .venv first, so each works on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned so pip takes the local CPU build on CPU-only machines; on a GPU box the same pin
# pulls the CUDA build from PyPI. Override, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install ftexp with its dependencies

run: install ## Fine-tune the default classifier (MiniLM on SST-2); pass overrides with ARGS="..."
	HF_HUB_OFFLINE=1 $(PY) -m ftexp $(ARGS)

# The report's browser test opens report.html in headless Chromium (the Debian package: Playwright
# drives it, nothing is downloaded). Installed only when missing and apt-get can run as root.
CHROMIUM ?= /usr/bin/chromium
browser: ## Install Chromium for the report's browser test when missing (Debian/Ubuntu, as root)
	@if [ -x "$(CHROMIUM)" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed (apt-get failed): the browser test will skip"; \
	else echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser test will skip"; fi

# Evaluation measuring learning (conf/experiment/tiny_eval_demo.yaml): the random-init base, an SFT
# stage that learns the answer's form, DPO that learns the facts, and the report's paired tests.
EVAL_DEMO ?= outputs/eval_demo
eval-demo: install ## Benchmark evaluation end to end: base, SFT and DPO on ftexp_colours_mc, then the report (~70 s on 2 cores)
	HF_HUB_OFFLINE=1 $(PY) -m ftexp.evaluate model=tiny_llama "eval.tasks=[ftexp_colours_mc]" -o $(EVAL_DEMO)/base
	HF_HUB_OFFLINE=1 $(PY) -m ftexp +experiment=tiny_eval_demo_sft hydra.run.dir=$(EVAL_DEMO)/sft
	HF_HUB_OFFLINE=1 $(PY) -m ftexp +experiment=tiny_eval_demo model.init_from=$(abspath $(EVAL_DEMO))/sft hydra.run.dir=$(EVAL_DEMO)/dpo
	HF_HUB_OFFLINE=1 $(PY) -m ftexp.report $(EVAL_DEMO)/base $(EVAL_DEMO)/sft $(EVAL_DEMO)/dpo --out $(EVAL_DEMO)/report

ui: install ## The web UI on http://127.0.0.1:7860: compose, launch, watch, compare, chat; ARGS="--port 7861"
	HF_HUB_OFFLINE=1 $(PY) -m ftexp.ui $(ARGS)

ui-screenshots: install browser ## Retake docs/ui_*.png: the web UI's browser test (slow tier, ~45 s) saves them
	HF_HUB_OFFLINE=1 FTEXP_UI_SCREENSHOTS=$(CURDIR)/docs $(PY) -m pytest tests/test_ui_browser.py -m slow -q

test: install browser ## Run the test suite (without the slow and gpu tiers)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not gpu" $(ARGS)

test-slow: install ## Run the slow tier too
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not gpu" $(ARGS)

bench-dpo: install ## Benchmark DPO: ftexp vs TRL (TRL in .venv-bench-trl/), precompute vs copy sweep; ARGS="--part compare"
	HF_HUB_OFFLINE=1 TORCH_SPEC="$(TORCH_SPEC)" $(PY) benchmarks/dpo_vs_trl.py $(ARGS)

bench-grpo: install ## Benchmark GRPO: ftexp vs TRL (TRL in .venv-bench-trl/); ARGS="--repeats 3"
	HF_HUB_OFFLINE=1 TORCH_SPEC="$(TORCH_SPEC)" $(PY) benchmarks/grpo_vs_trl.py $(ARGS)

bench-ppo: install ## Benchmark PPO: ftexp vs TRL 1.12's PPOTrainer (in .venv-bench-trl-1.12.0/); ARGS="--repeats 3"
	HF_HUB_OFFLINE=1 TORCH_SPEC="$(TORCH_SPEC)" $(PY) benchmarks/ppo_vs_trl.py $(ARGS)

bench-lm-memory: install ## Peak memory and step time of one LM step: full logits vs the chunked loss
	HF_HUB_OFFLINE=1 $(PY) benchmarks/lm_memory.py $(ARGS)

gpu-wheels: install ## Build benchmarks/wheels/: what a bare GPU machine needs for benchmarks/gpu_check.sh
	bash benchmarks/gpu_wheels.sh $(ARGS)

bench-speed: install ## Benchmark the default job: ftexp vs transformers Trainer, same job, each in its own process; ARGS="--repeats 3"
	$(PY) -m pip install -q -e ".[bench]"
	HF_HUB_OFFLINE=1 $(PY) benchmarks/default_job_vs_hf.py $(ARGS)

bench-packing: install ## Benchmark SFT packing: ftexp padded vs packed, + LLaMA-Factory (in .venv-bench-llamafactory/) if it installs
	HF_HUB_OFFLINE=1 TORCH_SPEC="$(TORCH_SPEC)" $(PY) benchmarks/sft_packing.py --llamafactory $(ARGS)

bench-eval: install ## Benchmark evaluation: in-run harness vs ftexp.evaluate vs the lm_eval command on the export; ARGS="--repeats 5"
	HF_HUB_OFFLINE=1 $(PY) benchmarks/eval_vs_lm_eval.py $(ARGS)

lint: install ## Lint with ruff
	$(PY) -m ruff check src tests benchmarks

clean: ## Remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs/runs outputs/multirun outputs/evals outputs/eval_demo
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install browser run ui ui-screenshots test test-slow bench-dpo bench-grpo bench-ppo bench-lm-memory bench-speed bench-packing bench-eval gpu-wheels eval-demo lint clean
