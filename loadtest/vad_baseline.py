"""The live-calls baseline: a bare grpc.aio server keeping one Silero ONNX Runtime session per call.

This is how voice-agent frameworks run Silero VAD (one silero-vad ``OnnxWrapper`` per call):
per stream an ``InferenceSession`` of the wheel's ``silero_vad.onnx`` with one thread, as
OnnxWrapper makes it, the state ``[2, 1, 128]`` and the 64-sample context it prepends, each
512-sample frame one ``run`` at batch 1 on the event loop. It speaks statestream's Session
proto as the ``voice_activity`` driver does (a Step or a Run of PCM16 audio, partial frames
buffered, answered per frame with the same messages and the same speech events, by the
driver's own helpers), so ``statestream bench --vad-calls`` drives both servers with one client.
Run it as ``python -m loadtest.vad_baseline --port 0``.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime

from loadtest.echo import EchoServicer, serve
from loadtest.echo import parser as echo_parser
from service import command, process
from service.api import statestream_pb2 as pb
from service.command import Parser
from service.drivers.voice_activity import SpeechTracker, VadOptions, decode_audio, frame_output
from service.errors import StatestreamError, status_number
from service.servicers.wire import Context, Malformed

RATE, FRAME, CONTEXT = 16000, 512, 64
#: The most samples one Run may carry (4096 frames, statestream's default --max-chunk).
MAX_SAMPLES = 4096 * FRAME


def wheel_graph() -> Path:
    """The silero-vad wheel's ``silero_vad.onnx`` (the dev extra installs the wheel)."""
    try:
        import silero_vad
    except ImportError:
        raise SystemExit("the VAD baseline needs the silero-vad wheel: pip install -e '.[dev]'") from None
    return Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"


class Call:
    """One call's Silero, as OnnxWrapper keeps it: its own ORT session, state and context."""

    def __init__(self, graph: bytes) -> None:
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, CONTEXT), np.float32)
        self.pending = np.zeros(0, np.float32)
        self.tracker = SpeechTracker(np.zeros(3, np.int64), VadOptions(), RATE, FRAME)
        self.sr = np.array(RATE, np.int64)

    def frames(self, audio: pb.TensorInput) -> list[pb.StepOutput]:
        """Each frame the chunk completes, run through the call's own session, as its answer."""
        samples = np.concatenate([self.pending, decode_audio(audio, MAX_SAMPLES)])
        frames = len(samples) // FRAME
        outputs = []
        for index in range(frames):
            x = np.concatenate([self.context, samples[None, index * FRAME : (index + 1) * FRAME]], axis=1)
            out, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.sr})
            self.context = x[:, -CONTEXT:]
            probability = np.float32(out.reshape(-1)[0])
            outputs.append(frame_output(probability, self.tracker.frame(float(probability))))
        self.pending = samples[frames * FRAME :]
        return outputs

    def run(self, request: pb.Run) -> list[pb.SessionResponse]:
        outputs = self.frames(request.tensors)
        answers = [
            pb.SessionResponse(run_output=pb.RunOutput(seq=request.seq, index=index, output=output))
            for index, output in enumerate(outputs)
        ]
        answers.append(
            pb.SessionResponse(run_done=pb.RunDone(seq=request.seq, steps=len(outputs), stop_reason="chunk"))
        )
        return answers

    def step(self, request: pb.Step) -> list[pb.SessionResponse]:
        return [pb.SessionResponse(result=pb.StepResult(seq=request.seq, outputs=self.frames(request.tensors)))]


class BaselineServicer(EchoServicer):
    """SessionService.Session: open makes a Call, each Step or Run feeds it, close ends the stream
    (the other methods are the echo server's: the benchmark uses only Session)."""

    def __init__(self, graph: bytes) -> None:
        self.graph = graph

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.SessionResponse]:
        call: Call | None = None
        async for request in requests:
            if isinstance(request, Malformed):
                yield pb.SessionResponse(error=pb.Error(code=3, code_name="INVALID_ARGUMENT", message=request.reason))
                continue
            kind = request.WhichOneof("request")
            if kind == "open":
                call = Call(self.graph)
                yield pb.SessionResponse(opened=pb.SessionOpened(session_id=secrets.token_urlsafe(24), model="vad"))
            elif kind in ("step", "run") and call is not None:
                try:
                    for answer in call.step(request.step) if kind == "step" else call.run(request.run):
                        yield answer
                except StatestreamError as exc:
                    error = pb.Error(code=status_number(exc.code), code_name=exc.code.name, message=str(exc))
                    yield pb.SessionResponse(error=error)
            elif kind == "close":
                yield pb.SessionResponse(closed=pb.Closed())
                return


def parser() -> Parser:
    """The echo server's flags (host, port, event loop), under this module's name."""
    parser = echo_parser()
    parser.prog, parser.description = "python -m loadtest.vad_baseline", __doc__
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    servicer = BaselineServicer(wheel_graph().read_bytes())
    process.run(serve(servicer, "vad-baseline", args.host, args.port), args.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
