# The serving image: the `service` package, the shipped models and one ONNX Runtime. No PyTorch,
# no training or load-test code (docs/operations.md#container-images).
#   docker build -t statestream .                                   # CPU: slim Python 3.11, onnxruntime
#   docker build -t statestream:gpu --build-arg RUNTIME=gpu .        # GPU: CUDA 13 + cuDNN 9, onnxruntime-gpu
#   docker run --rm -p 50051:50051 statestream                      # GPU: add --gpus all (NVIDIA toolkit)
# Every Python package comes from a lock with hashes (deploy/locks/; `make locks` regenerates them):
# pip installs exactly those files or fails; no version range is resolved at build time. RUNTIME
# picks both the base and the lock, and each lock holds one ONNX Runtime package, so onnxruntime
# and onnxruntime-gpu are never installed together.
ARG RUNTIME=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# -- the bases: a Python each (deploy/locks/serve-cpu.txt is locked for 3.11, serve-gpu.txt for 3.12)
FROM ${PYTHON_IMAGE} AS cpu-base

# Ubuntu 24.04's Python 3.12. Its apt packages are not pinned (DL3008): the base image's tag fixes
# the release, and Ubuntu withdraws an exact version from the archive once an update replaces it.
FROM ${CUDA_IMAGE} AS gpu-base
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# -- the statestream wheel: pure Python, so one build serves both runtimes --------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY deploy/locks/build.txt /tmp/build.txt
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/build.txt
# Only the serving package is copied, so the wheel holds `service` alone (no training/, loadtest/).
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# -- the environment: the locked dependencies and the wheel in a venv; then pip goes, and the unlocked
#    setuptools that Python 3.11's venv brings along ---------------------------------------------------
FROM ${RUNTIME}-base AS venv
ARG RUNTIME
COPY deploy/locks/serve-${RUNTIME}.txt /tmp/lock.txt
COPY --from=wheel /wheels /tmp/wheels
RUN python3 -m venv /opt/statestream \
    && /opt/statestream/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/lock.txt \
    && /opt/statestream/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/statestream-*.whl \
    && /opt/statestream/bin/pip uninstall --yes setuptools pip

# -- the image ------------------------------------------------------------------------------------
FROM ${RUNTIME}-base
COPY --from=venv /opt/statestream /opt/statestream
# Root-owned and read-only to the server's user: a compromised server cannot swap a model. The
# mode is set, not copied, so a checkout made under a private umask still gives readable models.
COPY --chmod=0755 models /models
USER 10001:10001
ENV PATH=/opt/statestream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STATESTREAM_HOST=0.0.0.0 \
    STATESTREAM_PORT=50051 \
    STATESTREAM_MODELS_DIR=/models \
    STATESTREAM_LOG_JSON=1 \
    STATESTREAM_TARGET=127.0.0.1:50051
EXPOSE 50051
# The standard grpc.health.v1 check, asked by the image's own client: SERVING exits 0; starting,
# draining or no answer within 3 s exits non-zero. STATESTREAM_TARGET says where it asks: change
# it together with STATESTREAM_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["statestream", "client", "health", "--timeout-s", "3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["statestream", "serve"]
