# Every target creates .venv on first use, so a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help compile run test test-fast lint fmt bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Playwright drives the system Chromium (/usr/bin/chromium): it must never download a browser.
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

# PYTHONDONTWRITEBYTECODE would otherwise have every process, and every process test, compile the
# whole package again at start (most of the scheduler's start-up). compileall writes the .pyc files
# anyway and skips those that are up to date; Python ignores a stale one, so an edit is never missed.
compile: $(STAMP)  ## byte-compile the sources (the targets that run code do it first)
	@$(BIN)/python -m compileall -q party scheduler bench

run: compile  ## server and scheduler on the embedded store (Ctrl-C stops both)
	$(BIN)/python -m party up

test: compile  ## the whole suite, processes included
	$(BIN)/python -m pytest -q

# The two files below hold process tests only, and the plugins load schemathesis and hypothesis
# (about 3 s of imports) for them alone. Bytecode is written so that pytest keeps its rewritten
# test modules between runs (tests/conftest.py fails any unmarked test that starts a process).
FAST := -m "not processes" -p no:schemathesis -p no:hypothesispytest -p no:anyio \
	--ignore=tests/test_fuzz.py --ignore=tests/test_dashboard_browser.py

test-fast: compile  ## the suite without real processes (seconds)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q $(FAST)

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check party tests scheduler bench
	$(BIN)/ruff format --check party tests scheduler bench

fmt: $(STAMP)  ## ruff format and autofix
	$(BIN)/ruff format party tests scheduler bench
	$(BIN)/ruff check --fix party tests scheduler bench

bench: compile  ## the benchmark suite (writes bench/results.json)
	$(BIN)/python bench/run.py

bench-quick: compile  ## the benchmark suite, under a minute
	$(BIN)/python bench/run.py --quick

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
