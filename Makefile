# The two set-up commands of the README. Each creates .venv on a fresh machine and installs
# what it needs; running one again reuses the environment.
#   make serve   install the serving package (no torch) and serve the shipped models
#   make test    install everything (torch CPU, dev tools), then ruff, mypy and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 50051
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck pytest bench protos redis-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu]'
	touch $@

# torch==2.13.0 is installed first and on its own: on this project's machines that pin takes a
# CPU wheel from the local disk instead of a multi-GB CUDA build.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,dev]'
	touch $@

serve: $(VENV)/.serve
	$(BIN)/statestream serve --models-dir models --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy service training loadtest

# The session-store tests start their own Redis from the system's redis-server (Debian's package;
# no PyPI wheel ships one). CI runs as root on a fresh Debian machine, so it installs it here.
redis-server:
	@command -v redis-server >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }

pytest: $(VENV)/.dev redis-server
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.dev
	$(BIN)/statestream bench

protos: $(VENV)/.dev
	$(BIN)/python -m service.api.generate
