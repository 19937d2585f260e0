"""The shipped ``models/silero_vad_8k`` (Silero VAD imported for 8 kHz telephony audio) against
silero-vad's own code: the same graph as ``silero_vad``, its ``sr`` folded in as 8000 and a
32-sample carry, so its 256-sample frames must equal ``OnnxWrapper`` and ``VADIterator`` at 8 kHz.
(``tests/test_vad_silero.py`` checks that this folder is the wheel's graph imported with its spec.)
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from service.client.sdk import Client, StepFailed
from service.settings import Settings
from tests.conftest import ROOT
from tests.servers import ServerThread
from tests.test_vad_driver import feed
from tests.test_vad_silero import iterator_events, wrapper_probabilities
from tests.vad_audio import speech_with_noise

SHIPPED = ROOT / "models" / "silero_vad_8k"
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


@pytest.mark.parametrize("via", ["run", "step"])
def test_8k_telephony_frames_equal_onnx_wrapper_and_vad_iterator(
    server_8k: ServerThread, speech_8k: np.ndarray, via: str
) -> None:
    """20 ms telephony chunks (160 samples at 8 kHz) against silero-vad fed whole 256-sample frames."""
    want_probabilities, want_events = wrapper_probabilities(speech_8k, rate=RATE), iterator_events(speech_8k, rate=RATE)
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
