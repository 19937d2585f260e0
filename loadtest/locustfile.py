"""Locust users for every kind the server serves, each paced like the client it stands for.

Run headless with an SLO check through ``statestream loadtest`` (it starts the server too), or by
hand against a running server::

    locust -f loadtest/locustfile.py --headless -u 32 -r 32 -t 30s -H 127.0.0.1:50051

Each user declares itself with ``@workload`` (``loadtest.workloads``): the model it drives and
the p99 objective of every request name it reports; ``python -m loadtest.locustfile`` prints the
declarations. A user's ``wait_time`` is its client's pace (a typist, a sensor, a gateway), so
``-u`` sets the offered load and the objectives are checked at that load, not at saturation.
Each user holds one session (the gateway, many) for its whole life, and reports every answer to
Locust as a request; an in-stream error counts as a failure.
"""

from __future__ import annotations

import time
from typing import Any

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpc's sync API must cooperate with Locust's gevent loop

import gevent.queue  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, constant_throughput, task  # noqa: E402

from loadtest.call_audio import call_audio  # noqa: E402 - numpy only
from loadtest.workloads import print_registered, workload  # noqa: E402
from service.api import statestream_pb2 as pb  # noqa: E402
from service.api import statestream_pb2_grpc as rpc  # noqa: E402
from service.datasets.patterns import flip_bits, letter_patterns  # noqa: E402 - numpy only
from service.datasets.vowels import load_vowels  # noqa: E402 - numpy only
from service.tensors import to_proto  # noqa: E402

#: The speaker users' utterances: the bundled Japanese Vowels test set (7-29 frames of 12 coefficients).
UTTERANCES = load_vowels("test").utterances
#: The translation user's texts: one date written many ways.
DATE_TEXTS = (
    "Nov 27, 2026",
    "27th of November 2026",
    "11/27/26",
    "2026年11月27日",
    "27. November 2026",
    "le 27 nov. 2026",
)
#: The completion user's probes: each of the memory's letters with a quarter of its pixels flipped.
PROBES = flip_bits(np.repeat(letter_patterns("EQVYZ"), 8, axis=0), 0.25, seed=0)
#: The tensor user's inputs: seeded random vectors of ``lstm256``'s 64 features.
VECTORS = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n"
)


class Reader:
    """The answers of one streaming call, remembering whether a read was cut off.

    When a run ends, Locust kills each user's greenlet wherever it is, often inside a read. That
    read stays pending on the call, and a second read on it fails inside gRPC ("Internal gRPC
    call error 8", too many operations): so a user stopped mid-read cancels its call instead.
    """

    def __init__(self, call: Any) -> None:
        self.call = call
        self.reading = False

    def next(self) -> Any:
        self.reading = True
        answer = next(self.call)
        self.reading = False
        return answer

    def cancel(self) -> None:
        self.call.cancel()


class SessionStream:
    """One Session stream driven request by request (the sync gRPC API, fed from a gevent queue)."""

    def __init__(self, stub: rpc.SessionServiceStub) -> None:
        self._requests: gevent.queue.Queue[pb.SessionRequest | None] = gevent.queue.Queue()
        self._responses = Reader(stub.Session(iter(self._requests.get, None)))
        self.seq = 0

    def send(self, request: pb.SessionRequest) -> None:
        self._requests.put(request)

    def receive(self) -> pb.SessionResponse:
        response: pb.SessionResponse = self._responses.next()
        return response

    def open(self, model: str, init: pb.InitPayload | None = None, options: pb.SessionOptions | None = None) -> str:
        self.send(pb.SessionRequest(open=pb.OpenSession(model=model, init=init, options=options)))
        return self.receive().opened.session_id

    def close(self) -> None:
        """Closes the session; a stream cut off mid-read is cancelled (the server expires the session)."""
        if self._responses.reading:
            self._responses.cancel()
        else:
            self.send(pb.SessionRequest(close=pb.Close()))
            self.receive()
        self._requests.put(None)


class StatestreamUser(User):
    """Base: a channel to the server, one session on the user's model, and reporting of one timed
    exchange to Locust."""

    abstract = True
    model = ""  # set by @workload

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host)
        self.sessions = rpc.SessionServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.stream = SessionStream(self.sessions)
        self.stream.open(self.model, self.init_payload(), self.options())
        self.position = 0

    def init_payload(self) -> pb.InitPayload | None:
        """What the user's session opens with (none by default)."""
        return None

    def options(self) -> pb.SessionOptions | None:
        """The user's session options (the server's defaults by default)."""
        return None

    def on_stop(self) -> None:
        self.stream.close()
        self.channel.close()

    def report(self, name: str, started: float, error: str | None = None, length: int = 0) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=RuntimeError(error) if error else None,
            context={},
        )

    def next_text(self, size: int) -> str:
        start = self.position % (len(TEXT) - size)
        self.position += size
        return TEXT[start : start + size]

    def step(self, name: str, text: str) -> None:
        self.stream.seq += 1
        self.send_step(name, pb.Step(seq=self.stream.seq, text=text, last_only=True))

    def send_step(self, name: str, step: pb.Step) -> None:
        """Sends one Step and reports its answer (an in-stream error is a failure)."""
        started = time.perf_counter()
        self.stream.send(pb.SessionRequest(step=step))
        response = self.stream.receive()
        error = response.error.message if response.HasField("error") else None
        self.report(name, started, error, response.ByteSize())

    def server_run(
        self, name: str, request: pb.Run, stream: SessionStream | None = None, started: float | None = None
    ) -> None:
        """Sends a Run on ``stream`` (the user's own by default) and reads its streamed outputs; reports
        the time from ``started`` (default: now) to its end (RunDone or an error)."""
        started = time.perf_counter() if started is None else started
        stream = self.stream if stream is None else stream
        stream.send(pb.SessionRequest(run=request))
        while True:
            response = stream.receive()
            kind = response.WhichOneof("response")
            if kind != "run_output":
                error = response.error.message if kind == "error" else None
                self.report(name, started, error, response.ByteSize())
                return


@workload("char_lm", slo_ms={"step": 100.0})
class PredictUser(StatestreamUser):
    """A client streaming text one character per message (real-time next-character prediction)."""

    weight = 4
    wait_time = constant_throughput(20)  # a fast typist: 20 characters a second

    @task
    def step_one_character(self) -> None:
        self.step("step", self.next_text(1))


@workload("char_lm", slo_ms={"chunk16": 150.0})
class ChunkUser(StatestreamUser):
    """A client sending bursts: 16 characters per message, one model call."""

    weight = 1
    wait_time = constant_throughput(5)  # 5 bursts of 16 readings a second

    @task
    def step_a_chunk(self) -> None:
        self.step("chunk16", self.next_text(16))


@workload("char_lm", slo_ms={"generate_first_token": 200.0, "generate_32": 1000.0})
class GenerateUser(StatestreamUser):
    """A client asking the server to write 32 characters after a prompt."""

    weight = 1
    wait_time = constant_throughput(0.5)  # a new 32-character completion every 2 s

    @task
    def generate(self) -> None:
        self.stream.seq += 1
        request = pb.Generate(seq=self.stream.seq, prompt=self.next_text(8), max_tokens=32, temperature=0.8, seed=1)
        started = time.perf_counter()
        self.stream.send(pb.SessionRequest(generate=request))
        first = True
        while True:
            response = self.stream.receive()
            kind = response.WhichOneof("response")
            if kind == "token" and first:
                self.report("generate_first_token", started)
                first = False
            elif kind != "token":
                error = response.error.message if kind == "error" else None
                self.report("generate_32", started, error, response.ByteSize())
                return


@workload("char_lm", slo_ms={"multiplex64": 250.0})
class GatewayUser(StatestreamUser):
    """A gateway fronting 64 users: the next step of each in one Multiplex message."""

    weight = 1
    fan_out = 64
    wait_time = constant_throughput(10)  # each of its 64 users sends 10 characters a second

    def on_start(self) -> None:
        super().on_start()
        self.ids = [
            self.sessions.CreateSession(pb.OpenSession(model=self.model)).session_id for _ in range(self.fan_out)
        ]
        self.seq = 0
        self.requests: gevent.queue.Queue[pb.MultiplexRequest | None] = gevent.queue.Queue()
        self.answers = Reader(self.sessions.Multiplex(iter(self.requests.get, None)))

    def on_stop(self) -> None:
        if self.answers.reading:  # cut off mid-read: see Reader
            self.answers.cancel()
        self.requests.put(None)
        for session_id in self.ids:
            self.sessions.CloseSession(pb.CloseSessionRequest(session_id=session_id))
        super().on_stop()

    @task
    def multiplexed_step(self) -> None:
        self.seq += 1
        char = self.next_text(1)
        request = pb.MultiplexRequest(
            steps=[pb.SessionStep(session_id=i, step=pb.Step(seq=self.seq, text=char)) for i in self.ids]
        )
        started = time.perf_counter()
        self.requests.put(request)
        answer: pb.MultiplexResponse = self.answers.next()
        errors = [r.error.message for r in answer.results if r.HasField("error")]
        self.report("multiplex64", started, errors[0] if errors else None, answer.ByteSize())


@workload("hopfield_letters", slo_ms={"complete": 300.0})  # a few one-sweep model calls to a fixed point
class CompleteUser(StatestreamUser):
    """A client completing a noisy letter: the server sweeps it until no pixel changes, streaming each sweep."""

    weight = 1
    wait_time = constant_throughput(2)  # a new probe every half second

    @task
    def complete(self) -> None:
        self.stream.seq += 1
        probe = PROBES[self.position % len(PROBES)]
        self.position += 1
        request = pb.Run(seq=self.stream.seq, max_steps=30, seed=self.stream.seq)
        request.tensors.tensors.append(to_proto("pattern", probe[None]))
        self.server_run("complete", request)


@workload("laser", slo_ms={"forecast_step": 100.0, "rollout20": 300.0})  # a rollout: 19 model calls on a copy
class ForecastUser(StatestreamUser):
    """A sensor streaming laser intensities one per message, asking for a 20-step rollout every 20th."""

    weight = 1
    wait_time = constant_throughput(20)  # 20 readings a second
    rollout_every = 20

    def on_start(self) -> None:
        super().on_start()
        from service.datasets.laser import load_laser  # numpy only

        self.readings = load_laser().test.astype(np.float32)

    @task
    def observe(self) -> None:
        self.stream.seq += 1
        value = self.readings[self.position % len(self.readings)].reshape(1, 1)
        self.position += 1
        step = pb.Step(seq=self.stream.seq, tensors=pb.TensorInput(tensors=[to_proto("observation", value)]))
        started = time.perf_counter()
        self.stream.send(pb.SessionRequest(step=step))
        response = self.stream.receive()
        self.report("forecast_step", started, response.error.message if response.HasField("error") else None)
        if self.position % self.rollout_every == 0:
            self.rollout()

    def rollout(self) -> None:
        self.stream.seq += 1
        self.server_run("rollout20", pb.Run(seq=self.stream.seq, max_steps=20))


@workload("speakers", slo_ms={"identify_frame": 100.0})
class IdentifyFrameUser(StatestreamUser):
    """A microphone streaming utterances frame by frame; each frame is answered with the running speaker
    probabilities, and the session is reset between utterances."""

    weight = 1
    wait_time = constant_throughput(20)  # 20 frames a second

    def on_start(self) -> None:
        super().on_start()
        self.frame = 0

    @task
    def identify_frame(self) -> None:
        utterance = UTTERANCES[self.position % len(UTTERANCES)]
        if self.frame == len(utterance):  # the utterance is over: the next one starts from a fresh state
            self.position, self.frame = self.position + 1, 0
            self.stream.seq += 1
            self.stream.send(pb.SessionRequest(reset=pb.Reset(seq=self.stream.seq)))
            self.stream.receive()
            utterance = UTTERANCES[self.position % len(UTTERANCES)]
        self.stream.seq += 1
        step = pb.Step(seq=self.stream.seq)
        step.tensors.tensors.append(to_proto("frame", utterance[self.frame : self.frame + 1]))
        self.frame += 1
        self.send_step("identify_frame", step)


@workload("speakers_bi", slo_ms={"identify_utterance": 150.0})  # batched with the others' utterances
class IdentifyUtteranceUser(StatestreamUser):
    """A client sending whole utterances to the bidirectional model, one call each."""

    weight = 1
    wait_time = constant_throughput(5)  # five utterances a second

    @task
    def identify_utterance(self) -> None:
        self.stream.seq += 1
        step = pb.Step(seq=self.stream.seq)
        step.tensors.tensors.append(to_proto("frames", UTTERANCES[self.position % len(UTTERANCES)]))
        self.position += 1
        self.send_step("identify_utterance", step)


def caption_image(seed: int) -> np.ndarray:
    """A 64x64 image with a blob of ink at a seeded place: numpy only, so a user starts at once (the
    real scenes need scikit-learn, whose import takes seconds); its caption does not matter here."""
    rng = np.random.default_rng(seed)
    image = np.zeros((64, 64), np.float32)
    top, left = rng.integers(0, 44, size=2)
    image[top : top + 20, left : left + 20] = rng.random((20, 20), dtype=np.float32)
    return image


@workload("captioner", slo_ms={"caption": 500.0})  # 5-17 words, each one decoder step, streamed
class CaptionUser(StatestreamUser):
    """A client captioning an image: its session holds the encoded image, and each task decodes it
    greedily on the server (a decode leaves the session as it was), every word streamed."""

    weight = 1
    wait_time = constant_throughput(2)  # a caption every half second

    def init_payload(self) -> pb.InitPayload:
        return pb.InitPayload(tensors=[to_proto("image", caption_image(id(self)))])

    @task
    def caption(self) -> None:
        self.stream.seq += 1
        self.server_run("caption", pb.Run(seq=self.stream.seq, max_steps=20))


@workload("dates", slo_ms={"translate": 400.0})  # the encoder at open, then ~11 decoded characters
class TranslateUser(StatestreamUser):
    """A client normalising dates: each text opens a session (the encoder runs), a Run streams the ISO date."""

    weight = 1
    wait_time = constant_throughput(2)  # a date every half second

    def on_start(self) -> None:  # no long-lived session: every translation opens its own
        self.channel = grpc.insecure_channel(self.host)
        self.sessions = rpc.SessionServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.position = 0
        self.translation: SessionStream | None = None

    def on_stop(self) -> None:
        if self.translation is not None:
            self.translation.close()
        self.channel.close()

    @task
    def translate(self) -> None:
        text = DATE_TEXTS[self.position % len(DATE_TEXTS)]
        self.position += 1
        started = time.perf_counter()
        stream = self.translation = SessionStream(self.sessions)
        stream.open(self.model, pb.InitPayload(data=text.encode()))
        self.server_run("translate", pb.Run(seq=1, max_steps=16), stream=stream, started=started)
        stream.close()
        self.translation = None


@workload("lstm256", slo_ms={"tensor_step": 100.0})
class TensorStepUser(StatestreamUser):
    """A client streaming feature vectors to a plain recurrent model, one step per message, reading
    the model's output tensor back."""

    weight = 1
    wait_time = constant_throughput(20)  # 20 vectors a second

    def options(self) -> pb.SessionOptions:
        return pb.SessionOptions(return_tensors=["y"])

    @task
    def step_a_vector(self) -> None:
        self.stream.seq += 1
        step = pb.Step(seq=self.stream.seq)
        step.tensors.tensors.append(to_proto("x", VECTORS[self.position % len(VECTORS)][None]))
        self.position += 1
        self.send_step("tensor_step", step)


#: The VAD users' audio, cut into 20 ms telephony frames of 320 samples.
CALL_FRAMES = call_audio().reshape(-1, 320)


@workload("silero_vad", slo_ms={"vad_frame": 100.0})  # a live call's frame, answered before the next is due
class VadUser(StatestreamUser):
    """A live call's voice-activity detection: 20 ms PCM16 frames in Steps on a real-time schedule; the
    server buffers them into Silero's 512-sample frames and answers each completed one (and any event)."""

    weight = 1
    wait_time = constant_throughput(50)  # one 20 ms frame every 20 ms: real time

    @task
    def vad_frame(self) -> None:
        self.stream.seq += 1
        step = pb.Step(seq=self.stream.seq)
        step.tensors.tensors.append(to_proto("audio", CALL_FRAMES[self.position % len(CALL_FRAMES)]))
        self.position += 1
        self.send_step("vad_frame", step)


if __name__ == "__main__":
    print_registered()
