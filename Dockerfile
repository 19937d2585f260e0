# The serving image: the `service` package, the shipped models, ONNX Runtime. No PyTorch.
#   docker build -t statestream .                                   # CPU (default)
#   docker build -t statestream:gpu --build-arg RUNTIME=gpu .        # onnxruntime-gpu instead
#   docker run -p 50051:50051 statestream
# For the GPU image run with `--gpus all` on a host with the NVIDIA container toolkit; the CUDA
# and cuDNN libraries come from the onnxruntime-gpu wheel's dependencies.
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ARG RUNTIME=cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY loadtest ./loadtest
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${RUNTIME}]"

FROM python:${PYTHON}-slim
ARG RUNTIME=cpu
RUN useradd --system --uid 10001 statestream
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "statestream[${RUNTIME}]" && rm -rf /wheels
COPY --chown=statestream models /models
USER statestream
ENV STATESTREAM_HOST=0.0.0.0 \
    STATESTREAM_PORT=50051 \
    STATESTREAM_MODELS_DIR=/models \
    STATESTREAM_LOG_JSON=1
EXPOSE 50051
# Health: the standard gRPC health service (e.g. grpc_health_probe, or a Kubernetes grpc probe).
STOPSIGNAL SIGTERM
ENTRYPOINT ["statestream", "serve"]
