"""Bad input to inference.GRPCInferenceService: garbage frames, random fields and huge tensors get
documented statuses (or in-stream error_messages), and a native bystander session is unaffected.

The fuzzer (loadtest/fuzz.py, target ``oip``) draws the requests; the bystander steps a fixed
text throughout and must get exactly its solo outputs (tolerance 1e-5, the float32 contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest import fuzz
from service.api import grpc_service_pb2 as oip
from service.client import Client
from service.settings import Settings
from tests.conftest import OfflineLM
from tests.servers import ServerThread

TOLERANCE = 1e-5
LIMITS = fuzz.Limits(max_chunk=256, max_message_bytes=64 * 1024, max_generate_tokens=64)
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@pytest.fixture(scope="module")
def oip_fuzz_server(tiny_lm_dir: Path) -> Iterator[ServerThread]:
    settings = Settings(models_dir=tiny_lm_dir, max_chunk=LIMITS.max_chunk, max_message_bytes=LIMITS.max_message_bytes)
    running = ServerThread(settings)
    yield running
    running.stop()


def test_fuzzed_oip_requests_get_documented_codes_and_the_bystander_is_unaffected(
    oip_fuzz_server: ServerThread, tiny_lm_dir: Path, offline_lm: OfflineLM
) -> None:
    reference = fuzz.Reference(tiny_lm_dir / "char_lm")
    solo = offline_lm.logits(fuzz.BYSTANDER_TEXT)
    fuzzer = fuzz.Fuzzer(oip_fuzz_server.target, reference, model="char_lm", bystander_solo=solo)
    strategies = fuzz.Strategies(reference.vocabulary, reference.input.name, "char_lm", LIMITS)
    try:
        fuzz.run_cases(fuzzer, strategies, 150, mix=(("oip", 100),))
    finally:
        summary = fuzzer.close()
    report = summary.report()
    assert summary.by_target["oip"] == 150 and summary.violation_count == 0, report
    assert set(summary.codes) <= fuzz.ALLOWED and summary.codes["INVALID_ARGUMENT"] > 0, report
    assert oip_fuzz_server.thread.is_alive() and summary.healthy_after, report
    assert summary.sessions_left == 0, report  # every sequence a case started was ended
    assert summary.bystander_steps > 0 and summary.bystander_errors == 0, report
    assert summary.bystander_max_diff <= TOLERANCE, report


def test_garbage_frames_and_a_huge_tensor_on_one_stream_each_get_an_error_and_the_stream_goes_on(
    oip_fuzz_server: ServerThread, offline_lm: OfflineLM
) -> None:
    channel = grpc.insecure_channel(oip_fuzz_server.target)
    stream = channel.stream_stream(STREAM, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    good = oip.ModelInferRequest(model_name="char_lm", id="good", raw_input_contents=[np.int64(3).tobytes()])
    good.inputs.add(name="char_id", datatype="INT64", shape=[1])
    huge = oip.ModelInferRequest(model_name="char_lm", raw_input_contents=[bytes(60_000)])
    huge.inputs.add(name="char_id", datatype="INT64", shape=[1, 7500])
    sent = [b"\xff\xff\xff", b"\x0a\x05ab", huge.SerializeToString(), good.SerializeToString()]
    answers = [oip.ModelStreamInferResponse.FromString(a) for a in stream(iter(sent))]
    assert len(answers) == 4
    assert all(a.error_message.startswith("INVALID_ARGUMENT: ") for a in answers[:3]), answers[:3]
    assert "has shape [1, 7500]" in answers[2].error_message
    assert not answers[3].error_message and answers[3].infer_response.id == "good"
    with Client(oip_fuzz_server.target) as native:  # the server still serves the native API
        assert [m.name for m in native.list_models()] == ["char_lm"]
    channel.close()
