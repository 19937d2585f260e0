"""The shipped ``models/silero_vad_8k`` (Silero VAD imported for 8 kHz telephony audio) against
silero-vad's own code: the same graph as ``silero_vad``, its ``sr`` folded in as 8000 and a
32-sample carry, so its 256-sample frames must equal ``OnnxWrapper`` and ``VADIterator`` at 8 kHz.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import silero_vad
import torch
from silero_vad.utils_vad import OnnxWrapper, VADIterator

from service.cli import main as statestream_main
from service.client.sdk import Client, StepFailed
from service.settings import Settings
from tests.conftest import ROOT
from tests.servers import ServerThread
from tests.test_vad_driver import Events, feed
from tests.vad_audio import speech_with_noise

SHIPPED = ROOT / "models" / "silero_vad_8k"
WHEEL_GRAPH = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
RATE, FRAME = 8000, 256
TOLERANCE = 1e-5  # float32 through the same graph, batched against alone


@pytest.fixture(scope="module")
def server_8k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    folder = tmp_path_factory.mktemp("silero_8k")
    (folder / "silero_vad_8k").symlink_to(SHIPPED)
    running = ServerThread(Settings(models_dir=folder))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def speech_8k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_with_noise(tmp_path_factory.mktemp("speech_8k"), RATE)


def reference(audio: np.ndarray) -> tuple[list[float], Events]:
    """OnnxWrapper's probability of every 256-sample frame, and VADIterator's events, at 8 kHz."""
    floats = torch.from_numpy(audio.astype(np.float32) / 32768.0)
    frames = [floats[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]
    wrapper = OnnxWrapper(str(WHEEL_GRAPH), force_onnx_cpu=True)
    probabilities = [float(wrapper(frame, RATE).item()) for frame in frames]
    iterator = VADIterator(OnnxWrapper(str(WHEEL_GRAPH), force_onnx_cpu=True), sampling_rate=RATE)
    events: Events = []
    for frame in frames:
        event = iterator(frame)
        if event:
            ((name, sample),) = event.items()
            events.append(("speech_" + name, int(sample)))
    return probabilities, events


def test_the_shipped_8k_folder_is_the_wheels_graph_imported_with_its_spec(tmp_path: Path) -> None:
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["training"]["sha256"] == hashlib.sha256(WHEEL_GRAPH.read_bytes()).hexdigest()
    assert silero_vad.__version__ in (SHIPPED / "README.md").read_text()
    out = tmp_path / "silero_vad_8k"
    argv = ["import", str(WHEEL_GRAPH), "--spec", str(SHIPPED / "import.toml"), "--out", str(out)]
    assert statestream_main([*argv, "--name", "silero_vad_8k", "--task", "voice_activity"]) == 0
    for name in ("manifest.json", "step.onnx"):
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert "MIT License" in (SHIPPED / "LICENSE").read_text()


@pytest.mark.parametrize("via", ["run", "step"])
def test_8k_telephony_frames_equal_onnx_wrapper_and_vad_iterator(
    server_8k: ServerThread, speech_8k: np.ndarray, via: str
) -> None:
    """20 ms telephony chunks (160 samples at 8 kHz) against silero-vad fed whole 256-sample frames."""
    want_probabilities, want_events = reference(speech_8k)
    with Client(server_8k.target) as client:
        probabilities, events = feed(client.open("silero_vad_8k"), speech_8k, 160, via=via)
    assert len(probabilities) == len(want_probabilities) == len(speech_8k) // FRAME
    np.testing.assert_allclose(probabilities, want_probabilities, rtol=0, atol=TOLERANCE)
    assert want_events and events == want_events


def test_16k_audio_to_the_8k_model_is_refused(server_8k: ServerThread, speech_8k: np.ndarray) -> None:
    with Client(server_8k.target) as client:
        session = client.open("silero_vad_8k")
        with pytest.raises(StepFailed, match=r"16000.*8000|8000.*16000") as refused:
            list(session.run(4, tensors={"audio": speech_8k[:512]}, options={"sample_rate": 16000.0}))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
