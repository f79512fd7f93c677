# Developer sessions; .ci/run runs `make lint type layers test slow` in its dev venv (.venv).
# Run them in an activated venv with the dev extra: . .venv/bin/activate && pip install -e ".[dev]"
# Every target fails on the first failing command (pytest's exit 5, "no tests collected", included).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTEST ?= pytest -q -p no:cacheprovider
SOURCES := src tests benchmarks scripts

.PHONY: help lint format type layers test docs slow gpu ci

help:
	@echo "make lint    ruff check + ruff format --check ($(SOURCES))"
	@echo "make format  ruff format + ruff check --fix (rewrites files)"
	@echo "make type    mypy (pyproject.toml: strict, python_version 3.10)"
	@echo "make layers  lint-imports (the layering contracts in pyproject.toml)"
	@echo "make test    the test suite"
	@echo "make docs    README and docs/: runnable examples, links, README size"
	@echo "make slow    the slow tests (CRYSTAL_RT_SLOW=1): emulator ThreadSanitizer runs, full load test"
	@echo "make gpu     on a GPU machine: the @pytest.mark.gpu tests and crystal-rt doctor --gpu"
	@echo "make ci      what .ci/run runs in the dev venv: lint type layers test slow"

lint:
	ruff check $(SOURCES)
	ruff format --check $(SOURCES)

format:
	ruff format $(SOURCES)
	ruff check --fix $(SOURCES)

type:
	mypy

layers:
	lint-imports

test:
	$(PYTEST)

docs:
	$(PYTEST) tests/test_docs_examples.py

# Every test marked slow, so that each runs in CI (.ci/run calls `make slow`):
# the CUDA emulator's ThreadSanitizer runs (CLAHE is race-free, a planted race is caught), and the
# full load test (150 requests, 90 watched files: a few minutes on 2 cores; the short one is in `make test`).
slow:
	CRYSTAL_RT_SLOW=1 $(PYTEST) tests/cuda_emu -k "tsan or syncthreads"
	CRYSTAL_RT_SLOW=1 $(PYTEST) -m slow tests/serve/test_load.py

# Needs an NVIDIA GPU (elsewhere the gpu tests skip and doctor --gpu exits 2). GPU_IMAGES: a folder
# of your own drops for the acceptance command (default: the three real ones).
GPU_IMAGES ?= tests/data/real
gpu:
	$(PYTEST) -m gpu tests
	crystal-rt doctor --gpu --images $(GPU_IMAGES)

ci: lint type layers test slow
