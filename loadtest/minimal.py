"""The bare server: statestream's Session proto and model call with none of its session machinery.

``statestream bench`` compares statestream with this grpc.aio server, so it measures what the
sessions, the seq rule and the scheduler cost instead of guessing it. Per stream it keeps the
state (numpy arrays) and options of its ``open``; a ``step`` is decoded by the model's own
driver (so the work and the refusals match the real server's), run at batch 1 with
``InferenceSession.run``, and answered as the real server answers (the same top-k ranking and
``return_tensors``, so the answer sizes match). Nothing else: no session ids that resolve, no
resume, no seq check (the seq is only echoed), no batching, no Multiplex, no init graphs. It runs
on asyncio's own event loop unless ``--event-loop uvloop`` asks for statestream's, and with gRPC
core's settings as the user gave them (grpc is imported before ``loadtest.echo``, so
``service.grpc_environment`` changes nothing here): a user's own server.
Run it as ``python -m loadtest.minimal --models-dir models --model lstm256 --port 0``;
docs/benchmarks.md has what it measured.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import grpc
import numpy as np

from loadtest.echo import serve
from loadtest.flags import model_folder
from service import command, process
from service.api import statestream_pb2 as pb
from service.command import Parser, nonempty_path, port
from service.contract import ContractError, zero_state
from service.errors import FailedPrecondition, NotFound, StatestreamError, status_number
from service.registry import LoadedModel
from service.servicers.wire import Context, Malformed
from service.session_options import ResolvedOptions
from service.settings import EVENT_LOOPS, Settings
from service.tasks import driver_class

#: Longest chunk a step may carry: the real server's default limit.
MAX_CHUNK = Settings().max_chunk


def _error(exc: StatestreamError | Malformed) -> pb.SessionResponse:
    if isinstance(exc, Malformed):
        return pb.SessionResponse(error=pb.Error(code=3, code_name="INVALID_ARGUMENT", message=exc.reason))
    return pb.SessionResponse(error=pb.Error(code=status_number(exc.code), code_name=exc.code.name, message=str(exc)))


class MinimalServicer:
    """SessionService.Session over one model; state lives in the handler's local variables."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.manifest = model.manifest
        self.driver = driver_class(self.manifest.task)(self.manifest)

    def open(self, request: pb.OpenSession) -> tuple[dict[str, np.ndarray], ResolvedOptions, pb.SessionResponse]:
        """A stream's fresh state and options, and the ``opened`` answer."""
        if request.model != self.manifest.name:
            raise NotFound(f"this server serves only {self.manifest.name!r}")
        options = self.driver.resolve_options(request.options)
        opened = pb.SessionOpened(
            session_id=secrets.token_urlsafe(24),
            model=self.manifest.name,
            version=self.manifest.version,
            state_bytes=self.manifest.state_bytes,
        )
        return zero_state(self.manifest, 1), options, pb.SessionResponse(opened=opened)

    def step(self, state: dict[str, np.ndarray], options: ResolvedOptions, step: pb.Step) -> pb.StepResult:
        """One batch-1 ORT call; ``state`` is updated in place with the graph's new state."""
        decoded = self.driver.decode_step(step, MAX_CHUNK)
        feed = {name: array[np.newaxis] for name, array in decoded.arrays.items()}
        outputs = self.model.run({**feed, **state})
        for spec in self.manifest.state:
            state[spec.input] = outputs[spec.output]
        per_step = {name: array[0] for name, array in outputs.items()}  # [K, ...], as a driver sees them
        if self.driver.postprocess is not None:
            per_step.update(self.driver.postprocess(per_step))
        return self.driver.build_result(options, step, decoded, per_step)

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        state: dict[str, np.ndarray] | None = None
        options = ResolvedOptions()
        async for request in requests:
            if isinstance(request, Malformed):
                yield _error(request)
                continue
            kind = request.WhichOneof("request")
            try:
                if kind == "open":
                    state, options, opened = self.open(request.open)
                    yield opened
                elif kind == "step" and state is not None:
                    yield pb.SessionResponse(result=self.step(state, options, request.step))
                elif kind == "close":
                    yield pb.SessionResponse(closed=pb.Closed())
                    return
                else:
                    raise FailedPrecondition(f"the minimal server does not take {kind!r} here (open, step, close)")
            except StatestreamError as exc:
                yield _error(exc)

    async def Multiplex(
        self, requests: AsyncIterator[pb.MultiplexRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.MultiplexResponse]:
        await _unimplemented(context, "Multiplex")
        yield pb.MultiplexResponse()  # pragma: no cover - never reached; makes this a stream handler

    async def CreateSession(self, request: pb.OpenSession | Malformed, context: Context) -> pb.SessionOpened:
        await _unimplemented(context, "sessions without a stream")

    async def CloseSession(
        self, request: pb.CloseSessionRequest | Malformed, context: Context
    ) -> pb.CloseSessionResponse:
        await _unimplemented(context, "sessions without a stream")


async def _unimplemented(context: Context, what: str) -> NoReturn:
    """Ends the call with UNIMPLEMENTED: only Session is part of the bare server."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"the minimal server has no {what}")
    raise AssertionError("context.abort raises")  # pragma: no cover


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.minimal", description=__doc__.split("\n\n")[0])
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="char_lm")
    made.add_argument("--host", default="127.0.0.1")
    made.add_argument("--port", type=port, default=0, help="0: a free one")
    made.add_argument("--event-loop", choices=EVENT_LOOPS, default="asyncio", help="the loop that runs it")
    return made


def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    folder = model_folder(made, args.models_dir, args.model)
    try:
        model = LoadedModel.from_folder(folder, Settings(), driver_class)
    except ContractError as exc:  # a manifest that reads, but a graph or golden trace the server would refuse too
        made.error(f"--model {args.model}: {exc}")
    process.run(serve(MinimalServicer(model), "minimal", args.host, args.port), args.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
