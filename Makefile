# The two set-up commands of the README. Each creates .venv on a fresh machine and installs
# what it needs; running one again reuses the environment.
#   make serve   install the serving package (no torch) and serve the shipped models
#   make test    install everything (torch CPU, dev tools), then ruff, hadolint, mypy and the test suite
#   make locks   regenerate the container's hash-locked requirements (deploy/locks/) from pyproject.toml
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 50051
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck pytest bench protos redis-server speech-tools valgrind

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu]'
	touch $@

# torch==2.13.0 is installed first and on its own: on this project's machines that pin takes a
# CPU wheel from the local disk instead of a multi-GB CUDA build. tritonclient (the OIP tests'
# client) goes in without its dependencies: it pins protobuf<7 (pyproject.toml's dev extra says why).
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'tritonclient==2.73.0'
	touch $@

serve: $(VENV)/.serve
	$(BIN)/statestream serve --models-dir models --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

typecheck: $(VENV)/.dev
	$(BIN)/mypy service training loadtest

# The session-store tests start their own Redis from the system's redis-server (Debian's package;
# no PyPI wheel ships one). CI runs as root on a fresh Debian machine, so it installs it here.
redis-server:
	@command -v redis-server >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }

# The voice-activity tests speak their test audio with espeak-ng and resample it with sox
# (tests/vad_audio.py): Debian packages too, installed the same way.
speech-tools:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends espeak-ng sox; }

# loadtest.instructions counts a step's instructions under valgrind (tests/test_instructions.py).
valgrind:
	@command -v valgrind >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind; }

pytest: $(VENV)/.dev redis-server speech-tools valgrind
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.dev
	$(BIN)/statestream bench

protos: $(VENV)/.dev
	$(BIN)/python -m service.api.generate

# The container's locks (docs/operations.md#lock-files): every pin with the hashes of all its files,
# for the Python each image runs. An existing pin is kept unless pyproject.toml no longer allows
# it; `make locks UPGRADE=--upgrade` moves every pin to the newest release allowed.
LOCKS := deploy/locks
UPGRADE ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command 'make locks' $(UPGRADE)

.PHONY: locks
locks: $(VENV)/.dev
	$(UV_COMPILE) --python-version 3.11 --extra cpu --output-file $(LOCKS)/serve-cpu.txt pyproject.toml
	$(UV_COMPILE) --python-version 3.12 --extra gpu --output-file $(LOCKS)/serve-gpu.txt pyproject.toml
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(UV_COMPILE) --python-version 3.11 --output-file $(LOCKS)/build.txt -
