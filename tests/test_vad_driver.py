"""The voice_activity driver's mechanics on a real server, with a stand-in model (tests/vad_model.py).

What does not need Silero's weights: partial frames buffered across chunks of any length, sent
as Steps (a live call's path) or Runs or both, speech events equal to silero-vad's own
``VADIterator`` fed the same probabilities, options kept per session, bad audio refused with the
session unchanged, 8 kHz models, and ``client vad``'s WAV checks. tests/test_vad_silero.py proves the shipped model against silero-vad's own code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from silero_vad.utils_vad import VADIterator

from service import command
from service.api import statestream_pb2 as pb
from service.client import commands
from service.client.sdk import Client, SyncSession
from service.drivers.voice_activity import FrameAnswers, frame_output
from service.settings import Settings
from service.tensors import from_proto, to_proto
from tests.servers import ServerThread
from tests.vad_audio import speech_with_noise, write_wav
from tests.vad_model import write_energy_vad

MAX_CHUNK = 64  # frames: a chunk of more than 64 * 512 samples is RESOURCE_EXHAUSTED
RATE = 16000

Events = list[tuple[str, int]]
#: How a test sends its chunks: Runs, Steps (a Run first where options are set), or both in turn.
VIA = ("run", "step", "both")


@pytest.fixture(scope="module")
def vad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vad_models")
    write_energy_vad(folder, "energy_vad", 512)
    write_energy_vad(folder, "energy_vad_8k", 256)
    return folder


@pytest.fixture(scope="module")
def vad_server(vad_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=vad_dir, max_chunk=MAX_CHUNK))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_with_noise(tmp_path_factory.mktemp("speech"), RATE)


def feed(
    session: SyncSession, audio: np.ndarray, chunk: int, options: dict[str, float] | None = None, via: str = "run"
) -> tuple[list[float], Events]:
    """Streams ``audio`` in chunks of ``chunk`` samples; every frame's probability and every event.

    ``via`` (one of ``VIA``): each chunk in a Run, in a Step, or Steps and Runs in turn. Options
    go in the first chunk, a Run (a Step has none); they stay set for the session."""
    probabilities: list[float] = []
    events: Events = []
    for index, first in enumerate(range(0, len(audio), chunk)):
        part = audio[first : first + chunk]
        for output in chunk_outputs(session, part, options, via == "step" or (via == "both" and index % 2 == 1)):
            probabilities.append(answer_probability(output))
            if output.label:
                sample = next(from_proto(t) for t in output.tensors if t.name == "sample")
                events.append((output.label, int(sample)))
        options = None  # set once: they stay set for the session
    return probabilities, events


def chunk_outputs(
    session: SyncSession, part: np.ndarray, options: dict[str, float] | None, as_step: bool
) -> list[pb.StepOutput]:
    """One chunk's frames: a Step's outputs, or a Run's (a chunk with options is always a Run)."""
    if as_step and not options:
        return list(session.step(tensors={"audio": part}).outputs)
    answers = session.run(len(part) // 256 + 1, tensors={"audio": part}, options=options or {})
    return [answer.output for answer in answers if isinstance(answer, pb.RunOutput)]


def answer_probability(output: pb.StepOutput) -> float:
    return float(next(from_proto(t) for t in output.tensors if t.name == "speech_probability"))


class Replay:
    """A model for ``VADIterator`` that answers the probabilities the server gave, in order."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = iter(probabilities)

    def reset_states(self) -> None:
        pass

    def __call__(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        return torch.tensor([[next(self.probabilities)]])


def iterator_events(probabilities: list[float], frame: int, rate: int, **options: Any) -> Events:
    """silero-vad's VADIterator run over the frames, answering ``probabilities``."""
    iterator = VADIterator(Replay(probabilities), sampling_rate=rate, **options)
    events: Events = []
    for _ in probabilities:
        event = iterator(torch.zeros(frame))
        if event:
            ((name, sample),) = event.items()
            events.append(("speech_" + name, sample))
    return events


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("chunk", [320, 160, 1000, 4096])
def test_chunks_of_any_length_answer_exactly_as_512_sample_frames(
    vad_server: ServerThread, speech: np.ndarray, chunk: int, via: str
) -> None:
    with Client(vad_server.target) as client:
        frames = feed(client.open("energy_vad"), speech, 512)
        other = feed(client.open("energy_vad"), speech, chunk, via=via)
    assert len(frames[0]) == len(speech) // 512
    assert other == frames  # exactly: the same frames, the same state, whatever the chunking
    assert [name for name, _ in frames[1]][:2] == ["speech_start", "speech_end"]


@pytest.mark.parametrize("via", ["run", "step"])
@pytest.mark.parametrize(
    "options",
    [{}, {"threshold": 0.6, "min_silence_duration_ms": 300.0, "speech_pad_ms": 64.0}, {"threshold": 0.3}],
)
def test_speech_events_equal_vad_iterators_on_the_same_probabilities(
    vad_server: ServerThread, speech: np.ndarray, options: dict[str, float], via: str
) -> None:
    with Client(vad_server.target) as client:
        probabilities, events = feed(client.open("energy_vad"), speech, 320, options, via)
    want = iterator_events(probabilities, 512, RATE, **options)
    assert len(want) >= 4  # the speech has several segments: starts and ends both compared
    assert events == want


def test_neg_threshold_sets_where_speech_ends(vad_server: ServerThread, speech: np.ndarray) -> None:
    """VADIterator ends speech below threshold - 0.15; neg_threshold moves that line. The reference
    is VADIterator fed the same probabilities with those between the two lines raised above the
    old one (where the moved line does not end speech, neither may the old)."""
    with Client(vad_server.target) as client:
        options = {"threshold": 0.5, "neg_threshold": 0.2}
        probabilities, events = feed(client.open("energy_vad"), speech, 512, options)
        default_events = feed(client.open("energy_vad"), speech, 512)[1]
    raised = [0.4 if 0.2 <= p < 0.35 else p for p in probabilities]
    assert events == iterator_events(raised, 512, RATE, threshold=0.5)
    assert events != default_events


def segments_of(events: Events, samples: int) -> list[dict[str, float]]:
    """Start/end pairs in seconds; a segment still open at the end closes at the audio's end."""
    segments: list[dict[str, float]] = []
    for name, sample in events:
        if name == "speech_start":
            segments.append({"start": sample / RATE})
        else:
            segments[-1]["end"] = sample / RATE
    if segments and "end" not in segments[-1]:
        segments[-1]["end"] = samples / RATE
    return segments


def refused(session: SyncSession, run: pb.Run) -> pb.Error:
    """Sends a Run as given and returns its in-stream error (it must be refused)."""
    run.seq = session.last_seq + 1
    response = session.send_raw(pb.SessionRequest(run=run))
    assert response.WhichOneof("response") == "error", response
    return response.error


def audio_run(tensor: pb.Tensor, max_steps: int = 8, **options: float) -> pb.Run:
    return pb.Run(max_steps=max_steps, tensors=pb.TensorInput(tensors=[tensor]), options=options)


def pcm(samples: np.ndarray) -> pb.Tensor:
    return to_proto("audio", samples.astype(np.int16))


NAN = np.full(600, np.nan, np.float32)
BAD_AUDIO = {
    "NaN samples": (audio_run(to_proto("audio", NAN)), "NaN or Inf"),
    "Inf samples": (audio_run(to_proto("audio", np.full(600, np.inf, np.float32))), "NaN or Inf"),
    "an odd PCM16 byte count": (
        audio_run(pb.Tensor(name="audio", dtype=pb.DATA_TYPE_INT16, shape=[320], data=b"\x01" * 641)),
        r"odd byte count \(641\)",
    ),
    "an empty chunk": (audio_run(pb.Tensor(name="audio", dtype=pb.DATA_TYPE_INT16, shape=[0])), "empty"),
    "a wrong sample rate": (audio_run(pcm(np.zeros(600)), sample_rate=8000.0), "sample_rate 8000 Hz.*takes 16000"),
    "int32 audio": (audio_run(to_proto("audio", np.zeros(600, np.int32))), "PCM16.*or float32"),
    "another tensor": (audio_run(to_proto("samples", np.zeros(600, np.float32))), "one tensor, 'audio'"),
    "a threshold out of range": (audio_run(pcm(np.zeros(600)), threshold=1.5), "threshold is 1.5"),
    "neg_threshold above threshold": (audio_run(pcm(np.zeros(600)), neg_threshold=0.7), "neg_threshold is 0.7"),
    "an unknown option": (audio_run(pcm(np.zeros(600)), window_ms=30.0), "unknown run option"),
    "too few max_steps": (audio_run(pcm(np.zeros(2000)), max_steps=1), "completes 4 frame.*max_steps is 1"),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_is_refused_by_name_and_the_session_goes_on_unchanged(
    vad_server: ServerThread, speech: np.ndarray, case: str
) -> None:
    run, message = BAD_AUDIO[case]
    first, rest = speech[16000:16700], speech[16700:24000]  # 700 samples: 188 wait in the buffer
    with Client(vad_server.target) as client:
        reference = client.open("energy_vad")
        feed(reference, first, 700)
        session = client.open("energy_vad")
        feed(session, first, 700)
        error = refused(session, run)
        assert error.code_name == "INVALID_ARGUMENT"
        assert re.search(message, error.message), error.message
        assert feed(session, rest, 512) == feed(reference, rest, 512)


def test_an_oversized_chunk_is_resource_exhausted_and_changes_nothing(
    vad_server: ServerThread, speech: np.ndarray
) -> None:
    with Client(vad_server.target) as client:
        reference, session = client.open("energy_vad"), client.open("energy_vad")
        error = refused(session, audio_run(pcm(np.zeros(MAX_CHUNK * 512 + 1)), max_steps=MAX_CHUNK + 1))
        assert error.code_name == "RESOURCE_EXHAUSTED" and "max_chunk" in error.message
        assert feed(session, speech[:20000], 512) == feed(reference, speech[:20000], 512)


#: The bad-audio cases a Step can carry (a Step has no options and no max_steps).
BAD_STEP_AUDIO = [case for case, (run, _) in BAD_AUDIO.items() if not run.options and case != "too few max_steps"]


@pytest.mark.parametrize("case", BAD_STEP_AUDIO)
def test_bad_audio_in_a_step_is_refused_by_name_and_the_session_goes_on_unchanged(
    vad_server: ServerThread, speech: np.ndarray, case: str
) -> None:
    run, message = BAD_AUDIO[case]
    first, rest = speech[16000:16700], speech[16700:24000]
    with Client(vad_server.target) as client:
        reference, session = client.open("energy_vad"), client.open("energy_vad")
        feed(reference, first, 700, via="step")
        feed(session, first, 700, via="step")
        step = pb.Step(seq=session.last_seq + 1, tensors=run.tensors)
        response = session.send_raw(pb.SessionRequest(step=step))
        assert response.WhichOneof("response") == "error", response
        assert response.error.code_name == "INVALID_ARGUMENT"
        assert re.search(message, response.error.message), response.error.message
        assert feed(session, rest, 320, via="step") == feed(reference, rest, 320, via="step")


@pytest.mark.parametrize(
    ("step", "code", "message"),
    [
        (pb.Step(text="hello"), "INVALID_ARGUMENT", "takes audio: send tensors with one tensor 'audio'"),
        (
            pb.Step(tensors=pb.TensorInput(tensors=[pcm(np.zeros(600))]), last_only=True),
            "INVALID_ARGUMENT",
            "last_only",
        ),
        (
            pb.Step(tensors=pb.TensorInput(tensors=[to_proto("input", np.zeros((1, 512), np.float32))])),
            "INVALID_ARGUMENT",
            "one tensor, 'audio'",
        ),
        (
            pb.Step(tensors=pb.TensorInput(tensors=[pcm(np.zeros(MAX_CHUNK * 512 + 1))])),
            "RESOURCE_EXHAUSTED",
            "max_chunk",
        ),
    ],
)
def test_a_step_that_is_not_one_chunk_of_audio_is_refused_and_changes_nothing(
    vad_server: ServerThread, speech: np.ndarray, step: pb.Step, code: str, message: str
) -> None:
    with Client(vad_server.target) as client:
        reference, session = client.open("energy_vad"), client.open("energy_vad")
        feed(reference, speech[:700], 700, via="step")
        feed(session, speech[:700], 700, via="step")
        request = pb.Step()
        request.CopyFrom(step)
        request.seq = session.last_seq + 1
        response = session.send_raw(pb.SessionRequest(step=request))
        assert response.WhichOneof("response") == "error", response
        assert response.error.code_name == code and message in response.error.message, response.error
        assert feed(session, speech[700:20000], 320, via="step") == feed(reference, speech[700:20000], 320, via="step")


def test_an_8khz_model_takes_256_sample_frames_and_refuses_16khz(vad_server: ServerThread, speech: np.ndarray) -> None:
    audio = speech[::2]  # 8 kHz, decimated: only the frame arithmetic matters here
    with Client(vad_server.target) as client:
        info = client.get_model("energy_vad_8k")
        assert {o.name: o.default for o in info.task_info.run_options}["sample_rate"] == 8000
        session = client.open("energy_vad_8k")
        probabilities, events = feed(session, audio, 160, {"sample_rate": 8000.0})  # 20 ms telephony frames
        assert len(probabilities) == len(audio) // 256
        assert events == iterator_events(probabilities, 256, 8000)
        error = refused(session, audio_run(pcm(np.zeros(300)), sample_rate=16000.0))
        assert error.code_name == "INVALID_ARGUMENT" and "takes 8000 Hz" in error.message


def test_client_vad_prints_segments_and_json(
    vad_server: ServerThread, speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = write_wav(tmp_path / "call.wav", speech, RATE)
    argv = ["vad", "--target", vad_server.target, "--model", "energy_vad", "--wav", str(wav)]
    assert commands.main([*argv, "--json", "--chunk-ms", "20"], environ={}) == 0
    document = json.loads(capsys.readouterr().out)
    with Client(vad_server.target) as client:
        probabilities, events = feed(client.open("energy_vad"), speech, 512)
    assert document["probabilities"] == probabilities
    want = segments_of(events, len(speech))
    got = [(segment["start"], segment["end"]) for segment in document["segments"]]
    np.testing.assert_allclose(got, [(w["start"], w["end"]) for w in want], atol=1e-4)  # rounded to 0.1 ms
    assert commands.main(argv, environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(document["segments"]) + 1 and lines[0].startswith("speech ") and "segment(s)" in lines[-1]


@pytest.mark.parametrize(
    ("wav", "message"),
    [
        ({"rate": 44100}, "is at 44100 Hz; model takes 16000 Hz"),
        ({"channels": 2}, "has 2 channels; the VAD takes mono"),
        ({"width": 1}, "is 8-bit; the VAD takes 16-bit PCM"),
        ({"bytes": b"RIFF\x00\x00\x00\x00WAVEjunk"}, "is not a PCM WAV file"),
    ],
)
def test_client_vad_refuses_a_wav_it_cannot_send_in_one_line(
    vad_server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], wav: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.wav"
    if "bytes" in wav:
        path.write_bytes(wav["bytes"])
    else:
        samples = np.zeros(1600, np.int16 if wav.get("width", 2) == 2 else np.uint8)
        write_wav(path, samples, wav.get("rate", RATE), wav.get("channels", 1), wav.get("width", 2))
    argv = ["vad", "--target", vad_server.target, "--model", "energy_vad", "--wav", str(path)]
    assert command.run(lambda: commands.main(argv, environ={})) == command.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "sox" in err[0], err


@pytest.mark.parametrize("event", [None, ("speech_start", 0), ("speech_end", 123_456_789)])
def test_a_steps_frame_answer_is_the_bytes_of_the_runs_message(event: tuple[str, int] | None) -> None:
    """The Step path writes each frame's StepOutput straight as bytes; they must be what the Run
    path's message (``frame_output``) serializes to, so both answers read alike."""
    probabilities = np.array([0.0, 0.25, 0.999], np.float32)
    answers = FrameAnswers()
    for t, probability in enumerate(probabilities):
        assert answers.encode(probabilities, t, event) == frame_output(probability, event).SerializeToString()
