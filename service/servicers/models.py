"""statestream.v1.ModelService: what is served, and the tensors of each model's contract."""

from __future__ import annotations

from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.errors import InvalidArgument, StatestreamError
from service.runtime import ModelRuntime, Runtimes
from service.servicers.wire import Context, Malformed
from service.tensors import proto_dtype


def model_info(runtime: ModelRuntime, max_run_steps: int) -> pb.ModelInfo:
    """What ModelService says of one model; ``max_run_steps`` is the server's bound on a Run."""
    manifest = runtime.model.manifest
    task_info = runtime.driver.task_info()
    if task_info.run:
        bound = runtime.driver.run_steps_bound
        task_info.max_run_steps = max_run_steps if bound is None else min(bound, max_run_steps)
    init_inputs = manifest.init.inputs if manifest.init is not None else ()
    return pb.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        task=manifest.task,
        description=manifest.description,
        inputs=[
            pb.TensorInfo(name=t.name, dtype=proto_dtype(t.dtype), shape=t.shape, doc=t.doc) for t in manifest.inputs
        ],
        outputs=[
            pb.TensorInfo(name=t.name, dtype=proto_dtype(t.dtype), shape=t.shape, doc=t.doc) for t in manifest.outputs
        ],
        state=[
            pb.TensorInfo(name=s.input, dtype=proto_dtype(s.dtype), shape=s.shape, doc=s.doc) for s in manifest.state
        ],
        state_bytes=manifest.state_bytes,
        vocabulary_size=runtime.driver.vocabulary_size,
        scores=manifest.scores,
        active_sessions=runtime.slabs.rows_in_use,
        task_info=task_info,
        context=[
            pb.TensorInfo(name=c.name, dtype=proto_dtype(c.dtype), shape=c.shape, doc=c.doc) for c in manifest.context
        ],
        init_inputs=[
            pb.TensorInfo(name=t.name, dtype=proto_dtype(t.dtype), shape=t.shape, doc=t.doc) for t in init_inputs
        ],
    )


class ModelServicer:
    def __init__(self, runtimes: Runtimes, auth: Authenticator, max_run_steps: int) -> None:
        self.runtimes = runtimes
        self.auth = auth
        self.max_run_steps = max_run_steps

    async def ListModels(self, request: pb.ListModelsRequest | Malformed, context: Context) -> pb.ListModelsResponse:
        try:
            self.auth.caller(context)
        except StatestreamError as exc:
            await context.abort(exc.code, exc.message)
        return pb.ListModelsResponse(models=[model_info(r, self.max_run_steps) for r in self.runtimes])

    async def GetModel(self, request: pb.GetModelRequest | Malformed, context: Context) -> pb.ModelInfo:
        try:
            self.auth.caller(context)
            if isinstance(request, Malformed):
                raise InvalidArgument(request.reason)
            return model_info(self.runtimes.get(request.name, request.version), self.max_run_steps)
        except StatestreamError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
