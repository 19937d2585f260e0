"""The echo ceiling: the statestream SessionService protocol with no model behind it.

It speaks the same proto through the same request decoding as the real server and answers
every step with a StepResult of the same size as ``char_lm``'s (one StepOutput per step, each
with the input character and five TokenProbs), but computes nothing. What it reaches on this
machine is the most a Python grpc.aio server can move, so the benchmark reports the real
server as a fraction of it. It runs on the event loop statestream runs on by default (uvloop
where installed, ``--event-loop``) with the same gRPC core settings (``service.grpc_environment``,
imported first), so that the ceiling is the same stack's. Run it as
``python -m loadtest.echo --port 0``.
"""

from __future__ import annotations

# isort: off
import service.grpc_environment  # noqa: F401  (first: it must run before grpc is imported)

# isort: on
import asyncio
import secrets
import signal
import string
import sys
from collections.abc import AsyncIterator

import grpc

from service import command, process
from service.api import statestream_pb2 as pb
from service.command import Parser, port
from service.listen_errors import check_can_listen
from service.servicers.wire import Context, Malformed, add_servicer
from service.settings import EVENT_LOOPS, address

#: Five made-up next tokens, the size of char_lm's default top_k answer.
TOP = [pb.TokenProb(id=i, token=ch, prob=0.2 - i * 0.01) for i, ch in enumerate(string.ascii_lowercase[:5])]


def echo_result(step: pb.Step) -> pb.StepResult:
    result = pb.StepResult(seq=step.seq)
    text = step.text[-1:] if step.last_only else step.text
    for ch in text:
        out = result.outputs.add(input=ch)
        out.top.extend(TOP)
    return result


def _opened() -> pb.SessionOpened:
    return pb.SessionOpened(session_id=secrets.token_urlsafe(24), model="echo", version="1", state_bytes=0)


class EchoServicer:
    """Answers like SessionService, with canned outputs."""

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        async for request in requests:
            if isinstance(request, Malformed):
                yield pb.SessionResponse(error=pb.Error(code=3, code_name="INVALID_ARGUMENT", message=request.reason))
                continue
            kind = request.WhichOneof("request")
            if kind in ("open", "attach"):
                yield pb.SessionResponse(opened=_opened())
            elif kind == "step":
                yield pb.SessionResponse(result=echo_result(request.step))
            elif kind == "close":
                yield pb.SessionResponse(closed=pb.Closed())
                return

    async def Multiplex(
        self, requests: AsyncIterator[pb.MultiplexRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.MultiplexResponse]:
        async for request in requests:
            if isinstance(request, Malformed):
                continue
            response = pb.MultiplexResponse()
            for entry in request.steps:
                response.results.add(session_id=entry.session_id, result=echo_result(entry.step))
            yield response

    async def CreateSession(self, request: pb.OpenSession | Malformed, context: Context) -> pb.SessionOpened:
        return _opened()

    async def CloseSession(
        self, request: pb.CloseSessionRequest | Malformed, context: Context
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse()


async def serve(servicer: object, label: str, host: str, port: int) -> None:
    """Serves ``servicer`` as SessionService until SIGTERM/SIGINT; prints ``<label> listening on host:port``.

    Shared by the echo ceiling, the minimal server and the VAD baseline, so all start, announce
    their port (read by ``loadtest.servers``) and stop the same way. A ``--host`` or ``--port``
    they cannot listen on is one usage line (a CommandError), as statestream serve's is.
    """
    check_can_listen(host, port)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_servicer(server, "SessionService", servicer)
    bound = server.add_insecure_port(address(host, port))
    await server.start()
    print(f"{label} listening on {address(host, bound)}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(0)


def parser() -> Parser:
    parser = Parser(prog="python -m loadtest.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=0)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    process.run(serve(EchoServicer(), "echo", args.host, args.port), args.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
