# Developer sessions; .ci/run runs `make lint type layers test-all` in its dev venv (.venv).
# Run them in an activated venv with the dev extra: . .venv/bin/activate && pip install -e ".[dev]"
# Every target fails on the first failing command (pytest's exit 5, "no tests collected", included).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTEST ?= pytest -q -p no:cacheprovider
SOURCES := src tests benchmarks scripts

.PHONY: help lint format type layers test test-all docs slow gpu ci

help:
	@echo "make lint    ruff check + ruff format --check ($(SOURCES))"
	@echo "make format  ruff format + ruff check --fix (rewrites files)"
	@echo "make type    mypy (pyproject.toml: strict, python_version 3.10)"
	@echo "make layers  lint-imports (the layering contracts in pyproject.toml)"
	@echo "make test    the quick suite (what a plain pytest runs: tests marked slow are skipped)"
	@echo "make test-all every test, the slow ones included (CRYSTAL_RT_SLOW=1; CI runs this)"
	@echo "make docs    README and docs/: runnable examples, links, README size"
	@echo "make slow    only the tests marked slow (CRYSTAL_RT_SLOW=1)"
	@echo "make gpu     on a GPU machine: the @pytest.mark.gpu tests and crystal-rt doctor --gpu"
	@echo "make ci      what .ci/run runs in the dev venv: lint type layers test-all"

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

# A plain `pytest` (and `make test`) skips the tests marked slow: a newcomer's run stays short on a
# laptop. `make test-all` runs every test, the slow ones included; CI runs it, so no test is left
# that only a developer remembers to run.
test:
	$(PYTEST)

test-all:
	CRYSTAL_RT_SLOW=1 $(PYTEST)

docs:
	$(PYTEST) tests/test_docs_examples.py

# Only the tests marked slow: the CUDA emulator's ThreadSanitizer runs (CLAHE is race-free, a
# planted race is caught), the full load test (150 requests, 90 watched files), and the heaviest
# end-to-end tests (models built and trained, engines on the simulated GPU).
slow:
	CRYSTAL_RT_SLOW=1 $(PYTEST) -m slow

# Needs an NVIDIA GPU (elsewhere the gpu tests skip and doctor --gpu exits 2). GPU_IMAGES: a folder
# of your own drops for the acceptance command (default: the three real ones).
GPU_IMAGES ?= tests/data/real
gpu:
	$(PYTEST) -m gpu tests
	crystal-rt doctor --gpu --images $(GPU_IMAGES)

ci: lint type layers test-all
