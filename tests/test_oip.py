"""The Open Inference Protocol, driven by tritonclient[grpc] from PyPI, unmodified, against a real server.

Each OIP sequence must answer exactly what a native statestream.v1 session fed the same inputs
answers (tolerance 1e-6: the same graph and the same float32 state, batched with others; the
batch-invariance of the scheduler is proved to 1e-5 elsewhere, and a softmax adds rounding).
"""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.client import Client
from service.settings import Settings
from service.tensors import from_proto
from tests.conftest import SHIPPED_MODELS, OfflineLM
from tests.servers import ServerThread
from tests.waiting import wait_until

TOLERANCE = 1e-6
#: The shipped models served beside the tiny char LM: a forecaster, a raw tensor model, a
#: whole-sequence classifier, and the captioner (which OIP cannot reach).
SHIPPED = ("laser", "lstm256", "speakers_bi", "captioner")
OIP_SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def oip_models(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("oip") / "models"
    shutil.copytree(tiny_lm_dir, target)
    for name in SHIPPED:
        shutil.copytree(SHIPPED_MODELS / name, target / name)
    return target


@pytest.fixture(scope="module")
def oip_server(oip_models: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=oip_models, idle_timeout_s=60.0))
    yield running
    running.stop()


@pytest.fixture
def client(oip_server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(oip_server.target)
    yield triton_client
    triton_client.close()


def char_input(char_id: int) -> triton.InferInput:
    tensor = triton.InferInput("char_id", [1], "INT64")
    tensor.set_data_from_numpy(np.array([char_id], np.int64))
    return tensor


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max())
    return exp / exp.sum()


def ids_of(text: str, offline_lm: OfflineLM) -> list[int]:
    return [offline_lm.vocab[ch] for ch in text]


def test_interleaved_sequences_on_one_stream_equal_native_sessions(
    oip_server: ServerThread, client: triton.InferenceServerClient, offline_lm: OfflineLM
) -> None:
    texts = {11: "To be, or not", 12: "Friends, Roma", "walrus": "Now is the wi"}
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    got: dict[object, list[np.ndarray]] = {key: [] for key in texts}
    length = len(next(iter(texts.values())))
    for t in range(length):
        for key, text in texts.items():
            client.async_stream_infer(
                "char_lm",
                [char_input(offline_lm.vocab[text[t]])],
                request_id=f"{key}-{t}",
                sequence_id=key,
                sequence_start=t == 0,
                sequence_end=t == length - 1,
            )
    for _ in range(length * len(texts)):
        result, error = answers.get(timeout=60)
        assert error is None, error
        key = result.get_response().id.rsplit("-", 1)[0]
        got[int(key) if key.isdigit() else key].append(result.as_numpy("probabilities")[0])
    client.stop_stream()
    with Client(oip_server.target) as native:
        for key, text in texts.items():
            session = native.open("char_lm", return_tensors=["logits"])
            expected = [softmax(from_proto(session.step(text=ch).outputs[0].tensors[0])) for ch in text]
            session.close()
            np.testing.assert_allclose(np.stack(got[key]), np.stack(expected), atol=TOLERANCE, rtol=0)
    # and both equal ONNX Runtime run directly on the graph
    np.testing.assert_allclose(
        np.stack(got[11]), np.stack([softmax(row) for row in offline_lm.logits(texts[11])]), atol=TOLERANCE, rtol=0
    )


def test_unary_infer_with_sequence_flags_carries_state_and_end_closes_the_sequence(
    oip_server: ServerThread, client: triton.InferenceServerClient, offline_lm: OfflineLM
) -> None:
    text = "Wherefore"
    rows = []
    for t, char_id in enumerate(ids_of(text, offline_lm)):
        result = client.infer(
            "char_lm",
            [char_input(char_id)],
            outputs=[triton.InferRequestedOutput("logits")],
            sequence_id=4242,
            sequence_start=t == 0,
            sequence_end=t == len(text) - 1,
        )
        assert [o.name for o in result.get_response().outputs] == ["logits"]  # only what was asked
        rows.append(result.as_numpy("logits")[0])
    np.testing.assert_allclose(np.stack(rows), offline_lm.logits(text), atol=TOLERANCE, rtol=0)
    with pytest.raises(InferenceServerException, match="sequence 4242 has ended") as ended:
        client.infer("char_lm", [char_input(1)], sequence_id=4242)
    assert ended.value.status() == "StatusCode.FAILED_PRECONDITION"


def test_typed_contents_are_answered_typed_and_raw_answered_raw(
    oip_server: ServerThread, offline_lm: OfflineLM
) -> None:
    """tritonclient always sends raw; the typed form is driven with its generated stubs."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(oip_server.target))
    char_id = offline_lm.vocab["T"]
    request = service_pb2.ModelInferRequest(model_name="char_lm", id="typed")
    request.inputs.add(name="char_id", datatype="INT64", shape=[1]).contents.int64_contents.append(char_id)
    request.outputs.add(name="logits")
    typed = stub.ModelInfer(request)
    assert not typed.raw_output_contents and typed.outputs[0].shape == [1, 65]
    expected = offline_lm.logits("T")[0]
    np.testing.assert_allclose(np.array(typed.outputs[0].contents.fp32_contents), expected, atol=TOLERANCE, rtol=0)
    raw = service_pb2.ModelInferRequest(model_name="char_lm", raw_input_contents=[np.int64(char_id).tobytes()])
    raw.inputs.add(name="char_id", datatype="INT64", shape=[1])
    answer = stub.ModelInfer(raw)
    assert [o.name for o in answer.outputs] == ["probabilities", "logits"]
    assert not answer.outputs[1].contents.fp32_contents
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[1], "<f4"), expected, atol=TOLERANCE, rtol=0)


def test_a_resent_request_id_is_answered_from_the_cache_and_applied_once(
    client: triton.InferenceServerClient, offline_lm: OfflineLM
) -> None:
    ids = ids_of("abc", offline_lm)
    first = client.infer("char_lm", [char_input(ids[0])], request_id="r1", sequence_id="resend", sequence_start=True)
    second = client.infer("char_lm", [char_input(ids[1])], request_id="r2", sequence_id="resend")
    again = client.infer("char_lm", [char_input(ids[1])], request_id="r2", sequence_id="resend")  # the resend
    start_again = client.infer(
        "char_lm", [char_input(ids[0])], request_id="r1", sequence_id="resend", sequence_start=True
    )  # a resent start does not restart the sequence
    third = client.infer("char_lm", [char_input(ids[2])], request_id="r3", sequence_id="resend", sequence_end=True)
    parameters = again.get_response().parameters
    assert parameters["statestream_duplicate"].bool_param and parameters["statestream_seq"].int64_param == 2
    assert start_again.get_response().parameters["statestream_seq"].int64_param == 1
    assert third.get_response().parameters["statestream_seq"].int64_param == 3
    np.testing.assert_array_equal(again.as_numpy("logits"), second.as_numpy("logits"))
    got = np.concatenate([r.as_numpy("logits") for r in (first, second, third)])
    np.testing.assert_allclose(got, offline_lm.logits("abc"), atol=TOLERANCE, rtol=0)  # "b" was applied once
    ended_again = client.infer("char_lm", [char_input(ids[2])], request_id="r3", sequence_id="resend")
    assert ended_again.get_response().parameters["statestream_duplicate"].bool_param
    np.testing.assert_array_equal(ended_again.as_numpy("logits"), third.as_numpy("logits"))


def test_health_metadata_config_and_repository_index(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("char_lm") and not client.is_model_ready("captioner")
    assert not client.is_model_ready("no_such_model")
    metadata = client.get_server_metadata()
    assert metadata.name == "statestream" and "sequence" in metadata.extensions
    model = client.get_model_metadata("laser")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("observation", "FP32", [-1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("prediction", "FP32", [-1, 1])]
    lm = client.get_model_metadata("char_lm")
    assert [(t.name, t.datatype, list(t.shape)) for t in lm.inputs] == [("char_id", "INT64", [-1])]
    assert [t.name for t in lm.outputs] == ["probabilities", "logits"]
    config = client.get_model_config("lstm256").config
    assert config.name == "lstm256" and config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [64])]
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert set(index) == {"char_lm", *SHIPPED}
    assert index["lstm256"].state == "READY"
    assert index["captioner"].state == "UNAVAILABLE" and "statestream.v1" in index["captioner"].reason


def test_tensor_forecaster_and_whole_sequence_models_equal_native_sessions(
    oip_server: ServerThread, client: triton.InferenceServerClient
) -> None:
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((5, 64)).astype(np.float32)
    observations = rng.standard_normal((5, 1)).astype(np.float32)
    frames = rng.standard_normal((20, 12)).astype(np.float32)
    oip_rows: dict[str, list[np.ndarray]] = {"lstm256": [], "laser": []}
    for t in range(5):
        for model, name, value in (("lstm256", "x", xs[t]), ("laser", "observation", observations[t])):
            tensor = triton.InferInput(name, [1, *value.shape], "FP32")
            tensor.set_data_from_numpy(value[np.newaxis])
            result = client.infer(model, [tensor], sequence_id=f"{model}-seq", sequence_start=t == 0)
            oip_rows[model].append(result.as_numpy("y" if model == "lstm256" else "prediction")[0])
    whole = triton.InferInput("frames", [1, 20, 12], "FP32")
    whole.set_data_from_numpy(frames[np.newaxis])
    classified = client.infer("speakers_bi", [whole])  # no sequence: one step of a one-step session
    with Client(oip_server.target) as native:
        for model, name, values in (("lstm256", "x", xs), ("laser", "observation", observations)):
            session = native.open(model, return_tensors=["y" if model == "lstm256" else "prediction"])
            expected = [from_proto(session.step(tensors={name: v[np.newaxis]}).outputs[0].tensors[0]) for v in values]
            session.close()
            np.testing.assert_allclose(np.stack(oip_rows[model]), np.stack(expected), atol=TOLERANCE, rtol=0)
        session = native.open("speakers_bi", return_tensors=["logits"])
        output = session.step(tensors={"frames": frames}).outputs[0]
        session.close()
    probabilities = next(from_proto(t) for t in output.tensors if t.name == "probabilities")
    np.testing.assert_allclose(classified.as_numpy("probabilities")[0], probabilities, atol=TOLERANCE, rtol=0)


def test_a_sequence_idle_past_the_ttl_is_refused_by_name_and_never_gets_a_new_session(
    tiny_lm_dir: Path, offline_lm: OfflineLM
) -> None:
    running = ServerThread(Settings(models_dir=tiny_lm_dir, idle_timeout_s=0.2))
    try:
        short = triton.InferenceServerClient(running.target)
        short.infer("char_lm", [char_input(1)], sequence_id=77, sequence_start=True)
        wait_until(lambda: len(running.server.store) == 0, 10, "the idle sequence's session to expire")
        with pytest.raises(InferenceServerException, match="sequence 77 has expired") as expired:
            short.infer("char_lm", [char_input(2)], sequence_id=77)
        assert expired.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert len(running.server.store) == 0  # no new session was opened for it
        short.close()
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: dict(inputs=[named_input("chr_id", [1], "INT64", np.array([1]))]), "unknown input 'chr_id'"),
        (lambda: dict(inputs=[named_input("char_id", [1, 1], "INT64", np.array([[1]]))]), "has shape [1, 1]"),
        (lambda: dict(inputs=[named_input("char_id", [1], "INT32", np.array([1], np.int32))]), "it must be INT64"),
        (lambda: dict(inputs=[named_input("char_id", [1], "INT64", np.array([999]))]), "vocabulary"),
        (lambda: dict(sequence_id=5), "sequence 5 is not open"),
        (lambda: dict(model_name="no_such_model"), "no_such_model"),
        (lambda: dict(model_name="captioner"), "statestream.v1"),
    ],
)
def test_errors_are_error_messages_on_the_stream_and_the_stream_goes_on(
    client: triton.InferenceServerClient, offline_lm: OfflineLM, build: object, message: str
) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    arguments = {"model_name": "char_lm", "inputs": [char_input(3)], **build()}  # type: ignore[operator]
    client.async_stream_infer(**arguments)
    client.async_stream_infer("char_lm", [char_input(offline_lm.vocab["T"])], request_id="after")
    bad, bad_error = answers.get(timeout=30)
    good, good_error = answers.get(timeout=30)
    client.stop_stream()
    assert bad is None and message in str(bad_error)
    assert good_error is None
    np.testing.assert_allclose(good.as_numpy("logits")[0], offline_lm.logits("T")[0], atol=TOLERANCE, rtol=0)


def named_input(name: str, shape: list[int], datatype: str, value: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def test_unary_errors_are_statuses(oip_server: ServerThread, client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", [char_input(1)])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as metadata:
        client.get_model_metadata("no_such_model")
    assert metadata.value.status() == "StatusCode.NOT_FOUND"
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(oip_server.target))
    request = service_pb2.ModelInferRequest(model_name="char_lm", raw_input_contents=[np.int64(1).tobytes()])
    request.inputs.add(name="char_id", datatype="INT64", shape=[1])
    request.parameters["sequence_start"].bool_param = True  # a flag without an id (tritonclient never sends one)
    with pytest.raises(grpc.RpcError, match="sequence_start needs a sequence_id") as flag:
        stub.ModelInfer(request)
    assert flag.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    del request.parameters["sequence_start"]
    request.parameters["priority"].uint64_param = 1
    with pytest.raises(grpc.RpcError, match="unknown parameter 'priority'"):
        stub.ModelInfer(request)


def test_health_and_reflection_list_the_service_and_no_oip_turns_it_off(
    oip_server: ServerThread, tiny_lm_dir: Path
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(oip_server.target)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=OIP_SERVICE))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    asks = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelInferRequest"),
    ]
    listed, found = list(reflect(iter(asks)))
    assert OIP_SERVICE in {s.name for s in listed.list_services_response.service}
    assert "statestream.v1.SessionService" in {s.name for s in listed.list_services_response.service}
    assert found.file_descriptor_response.file_descriptor_proto  # the descriptor a reflecting client reads
    channel.close()
    running = ServerThread(Settings(models_dir=tiny_lm_dir, oip=False))
    try:
        off = triton.InferenceServerClient(running.target)
        with pytest.raises(InferenceServerException) as missing:
            off.is_server_live()
        assert missing.value.status() == "StatusCode.UNIMPLEMENTED"
        off.close()
    finally:
        running.stop()


def test_every_shipped_model_is_reachable_over_oip_but_those_docs_api_md_names_as_native_only() -> None:
    from service.contract import Manifest
    from service.servicers.oip_tensors import oip_model

    unreachable = {
        folder.name
        for folder in SHIPPED_MODELS.iterdir()
        if (folder / "manifest.json").is_file() and oip_model(Manifest.load(folder)).unreachable
    }
    assert unreachable == {"captioner", "dates", "silero_vad", "silero_vad_8k"}
    api = (SHIPPED_MODELS.parent / "docs" / "api.md").read_text()
    assert "| `captioner`, `dates` (captioner, translator) | — (`UNAVAILABLE`)" in api
    assert "| `silero_vad`, `silero_vad_8k` (voice_activity) | — (`UNAVAILABLE`)" in api
