"""The shipped ``models/silero_vad`` against silero-vad's own code, on real (synthetic) speech.

The reference is the silero-vad package itself: ``OnnxWrapper`` (one ONNX Runtime session per
call, run per 512-sample frame, as voice frameworks run it) for the probabilities, and
``VADIterator`` over that wrapper for the speech events. The speech is espeak-ng's, with noise
between utterances (tests/vad_audio.py). Tolerance 1e-5 on probabilities: the served graph is the
same ONNX graph wrapped (carry and state moved into rows), and batching many calls into one ORT
call changes float summation order only; the events must be equal exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import silero_vad
import torch
from silero_vad.utils_vad import OnnxWrapper, VADIterator

from service.api import statestream_pb2 as pb
from service.cli import main as statestream_main
from service.client.sdk import AsyncClient, AsyncSession, Client
from service.settings import Settings
from tests.conftest import ROOT
from tests.servers import ServerThread
from tests.test_vad_driver import Events, feed, segments_of
from tests.vad_audio import speech_with_noise, write_wav

SHIPPED = ROOT / "models" / "silero_vad"
WHEEL_GRAPH = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
RATE, FRAME = 16000, 512
CALLS = 64
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def silero_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    folder = tmp_path_factory.mktemp("silero_models")
    (folder / "silero_vad").symlink_to(SHIPPED)
    running = ServerThread(Settings(models_dir=folder, max_sessions_per_caller=1000))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_with_noise(tmp_path_factory.mktemp("speech"), RATE)


#: Silero's frame at each rate it runs at.
FRAMES = {16000: 512, 8000: 256}


def _frames(audio: np.ndarray, rate: int) -> list[torch.Tensor]:
    """The whole frames of ``audio`` (int16) at ``rate``, as the floats silero-vad takes."""
    floats, frame = torch.from_numpy(audio.astype(np.float32) / 32768.0), FRAMES[rate]
    return [floats[i : i + frame] for i in range(0, len(audio) - frame + 1, frame)]


def wrapper_probabilities(audio: np.ndarray, *, rate: int = RATE) -> list[float]:
    """silero-vad's OnnxWrapper, one call per frame of ``audio`` (int16), from a fresh state."""
    model = OnnxWrapper(str(WHEEL_GRAPH), force_onnx_cpu=True)
    return [float(model(frame, rate).item()) for frame in _frames(audio, rate)]


def iterator_events(audio: np.ndarray, options: Mapping[str, float] | None = None, *, rate: int = RATE) -> Events:
    """silero-vad's VADIterator over OnnxWrapper, fed the frames of ``audio``."""
    iterator = VADIterator(OnnxWrapper(str(WHEEL_GRAPH), force_onnx_cpu=True), sampling_rate=rate, **(options or {}))
    events: Events = []
    for frame in _frames(audio, rate):
        event = iterator(frame)
        if event:
            ((name, sample),) = event.items()
            events.append(("speech_" + name, int(sample)))
    return events


@pytest.mark.parametrize("model", ["silero_vad", "silero_vad_8k"])
def test_the_shipped_folder_is_the_wheels_graph_imported_with_its_spec(tmp_path: Path, model: str) -> None:
    shipped = SHIPPED.parent / model
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest["training"]["sha256"] == hashlib.sha256(WHEEL_GRAPH.read_bytes()).hexdigest()
    assert silero_vad.__version__ in (shipped / "README.md").read_text()
    out = tmp_path / model
    argv = ["import", str(WHEEL_GRAPH), "--spec", str(shipped / "import.toml"), "--out", str(out)]
    assert statestream_main([*argv, "--name", model, "--task", "voice_activity"]) == 0
    assert json.loads((out / "manifest.json").read_text())["scores"] == {}  # the import scores nothing
    # The README's last step: the scores, recomputed from the graph, recorded in the manifest.
    assert statestream_main(["eval", "--model", str(out), "--record", "--quiet"]) == 0
    for name in ("manifest.json", "step.onnx"):
        assert (out / name).read_bytes() == (shipped / name).read_bytes(), name
    assert "MIT License" in (shipped / "LICENSE").read_text()


async def stream_call(session: AsyncSession, audio: np.ndarray, chunk: int, as_steps: bool) -> list[float]:
    """One live call: ``audio`` in chunks of ``chunk`` samples (in Steps or Runs), every frame's probability."""
    probabilities: list[float] = []
    for first in range(0, len(audio), chunk):
        part = audio[first : first + chunk]
        if as_steps:
            outputs = list((await session.step(tensors={"audio": part})).outputs)
        else:
            answers = session.run(len(part) // FRAME + 1, tensors={"audio": part})
            outputs = [answer.output async for answer in answers if isinstance(answer, pb.RunOutput)]
        probabilities.extend(float(np.frombuffer(output.tensors[0].data, "<f4")[0]) for output in outputs)
    return probabilities


def test_64_concurrent_calls_batched_equal_onnx_wrapper_per_call(
    silero_server: ServerThread, speech: np.ndarray
) -> None:
    """Each call hears its own 3 s of the speech (offsets spread over it); its frames share
    batches with the other calls', and each must equal OnnxWrapper run alone on that audio.
    Half the calls send their chunks as Steps (a live call's path), half as Runs."""
    calls = [np.roll(speech, -k * len(speech) // CALLS)[: 3 * RATE] for k in range(CALLS)]
    (runtime,) = list(silero_server.server.runtimes)
    batch_sizes: list[int] = []
    runtime.scheduler.on_batch = lambda batch: batch_sizes.append(len(batch))

    async def all_calls() -> list[list[float]]:
        async with AsyncClient(silero_server.target) as client:
            sessions = [await client.open("silero_vad") for _ in calls]
            streamed = (
                stream_call(s, a, 320, k % 2 == 0) for k, (s, a) in enumerate(zip(sessions, calls, strict=True))
            )
            return list(await asyncio.gather(*streamed))

    try:
        served = asyncio.run(all_calls())
    finally:
        runtime.scheduler.on_batch = None
    assert max(batch_sizes) > 1  # the calls' frames were batched together
    for audio, probabilities in zip(calls, served, strict=True):
        want = wrapper_probabilities(audio)
        assert len(probabilities) == len(want) == len(audio) // FRAME
        np.testing.assert_allclose(probabilities, want, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("via", ["run", "step"])
@pytest.mark.parametrize("options", [{}, {"threshold": 0.6, "min_silence_duration_ms": 250.0, "speech_pad_ms": 60.0}])
def test_streamed_segments_equal_vad_iterators(
    silero_server: ServerThread, speech: np.ndarray, options: dict[str, float], via: str
) -> None:
    with Client(silero_server.target) as client:
        probabilities, events = feed(client.open("silero_vad"), speech, 320, options, via)
    np.testing.assert_allclose(probabilities, wrapper_probabilities(speech), rtol=0, atol=TOLERANCE)
    want = iterator_events(speech, options)
    assert len(want) >= 4  # several utterances: starts and ends both compared
    assert events == want


@pytest.mark.parametrize("via", ["run", "step"])
def test_320_sample_chunks_give_exactly_what_512_sample_chunks_give(
    silero_server: ServerThread, speech: np.ndarray, via: str
) -> None:
    with Client(silero_server.target) as client:
        in_frames = feed(client.open("silero_vad"), speech, 512)
        assert feed(client.open("silero_vad"), speech, 320, via=via) == in_frames


def test_client_vad_json_is_onnx_wrappers_probabilities_and_vad_iterators_segments(
    silero_server: ServerThread, speech: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = write_wav(tmp_path / "call.wav", speech, RATE)
    png = tmp_path / "call.png"
    argv = ["client", "vad", "--target", silero_server.target, "--model", "silero_vad", "--wav", str(wav), "--json"]
    assert statestream_main([*argv, "--png", str(png)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_allclose(document["probabilities"], wrapper_probabilities(speech), rtol=0, atol=TOLERANCE)
    want = segments_of(iterator_events(speech), len(speech))
    got = [(segment["start"], segment["end"]) for segment in document["segments"]]
    np.testing.assert_allclose(got, [(w["start"], w["end"]) for w in want], atol=1e-4)  # rounded to 0.1 ms
