# Two set-up commands: `make run` (install + start the app) and `make test` (install + all tests).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
PORT    ?= 8501
REAL    ?= $(abspath ../shared/data)

.PHONY: run test test-fast bench browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# requirements*.txt: the pinned torch build, then this project (`pip install -e .`) with the
# dependencies pyproject.toml declares; the install also puts the `kt-studio` command in .venv/bin.
$(VENV)/.runtime: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(BIN)/streamlit run app.py --server.port $(PORT)

# Debian's Chromium for the Playwright tests (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(VENV)/.dev browser
	KT_REAL_DATA=$${KT_REAL_DATA:-$(REAL)} $(BIN)/python -m pytest

# Everything but the real-browser tests: the quick loop while developing.
test-fast: $(VENV)/.dev
	KT_REAL_DATA=$${KT_REAL_DATA:-$(REAL)} $(BIN)/python -m pytest -m "not browser"

bench: $(VENV)/.dev
	KT_REAL_DATA=$${KT_REAL_DATA:-$(REAL)} $(BIN)/python -m bench

clean:
	rm -rf runs .kt_cache test-artifacts .pytest_cache
