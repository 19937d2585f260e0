"""ModelStreamInfer's common request read from its bytes (``StepCodec.read_request``), without a message.

The server reads a sequence's usual step (one int64 ``sequence_id``, the model's inputs raw,
an optional request id) straight from the bytes that arrived, and parses anything else as
before. Proved here: on requests written by tritonclient's own protobuf classes, the bytes read
give what the checked path (parse, ``sequence_flags``, ``StepCodec.step``) gives; every other
shape, and every one of thousands of seeded corruptions it does take, is one the checked path
parses without an unknown field and reads the same; and over a real server the answers, errors
included, are byte for byte those of the same requests sent in a shape the bytes path leaves to
the checked one.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from service.answer_bytes import DUPLICATE, varint
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.contract import Manifest
from service.drivers.step_bytes import ReadStep
from service.servicers.inference import sequence_flags
from service.servicers.oip_tensors import (
    STREAM_RESULT,
    OipTensor,
    RawRequest,
    SequenceFlags,
    StepCodec,
    oip_model,
    sequence_entry,
)
from service.servicers.wire import Malformed, request_parser
from service.tasks import driver_class
from service.tensors import from_proto, to_proto
from tests.conftest import SHIPPED_MODELS
from tests.corruptions import corrupted
from tests.servers import ServerThread
from tests.test_oip_wire import MODELS, codec_of, random_input

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
parse = request_parser(oip.ModelInferRequest)
#: sequence ids of every varint length a positive int64 takes (1 to 9 bytes).
SEQUENCE_IDS = [1, 127, 128, 300, 2**21, 2**31 + 5, 2**49, 2**56 + 1, 2**63 - 1]
REQUEST_IDS = ["", "r-1", "été", "x" * 127]


def client_request(
    codec: StepCodec, sequence_id: object, request_id: str = "", seed: int = 0
) -> service_pb2.ModelInferRequest:
    """A step as tritonclient writes it: its generated class, inputs raw, the sequence_id parameter."""
    rng = np.random.default_rng(seed)
    request = service_pb2.ModelInferRequest(model_name=codec.model.name, id=request_id)
    if isinstance(sequence_id, str):
        request.parameters["sequence_id"].string_param = sequence_id
    elif sequence_id is not None:
        request.parameters["sequence_id"].int64_param = int(str(sequence_id))
    for spec in codec.model.inputs:
        array = random_input(spec, rng)
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return request


def read_bytes(codec: StepCodec, data: bytes) -> RawRequest | None:
    """What the servicer reads of ``data`` addressed to ``codec``'s model (its name, one length byte)."""
    name = codec.model.name.encode()
    if not data.startswith(b"\n" + bytes([len(name)]) + name):
        return None
    return codec.read_request(data, 2 + len(name))


def checked_read(codec: StepCodec, data: bytes) -> tuple[SequenceFlags, object, object, str] | None:
    """What the checked path makes of ``data``: flags, Step and rawness, outputs, id; None if refused."""
    request = parse(data)
    if isinstance(request, Malformed) or request.model_name != codec.model.name or request.model_version:
        return None
    try:
        return sequence_flags(request.parameters), codec.step(request), codec.requested_outputs(request), request.id
    except Exception:  # refused (InvalidArgument): the bytes path must not have taken it
        return None


def reading_codec(name: str) -> StepCodec:
    """``name``'s codec as the server builds it: a raw request's inputs read into a ReadStep where the
    model's driver decodes steps the default way, else a Step built for the driver to decode."""
    manifest = Manifest.load(SHIPPED_MODELS / name)
    return StepCodec(oip_model(manifest), "1", driver_class(manifest.task)(manifest).step_bytes is not None)


def codec_for(name: str, reads: bool) -> StepCodec:
    return reading_codec(name) if reads else codec_of(name)


def step_of(step: pb.Step | ReadStep) -> tuple[int, bool, dict[str, tuple[str, tuple[int, ...], bytes]]]:
    """A Step's seq, last_only and inputs (dtype, shape, bytes by name), parsed or read."""
    if isinstance(step, ReadStep):
        arrays = step.inputs.arrays
    else:
        arrays = {tensor.name: from_proto(tensor) for tensor in step.tensors.tensors}
    return step.seq, step.last_only, {name: (a.dtype.str, a.shape, a.tobytes()) for name, a in arrays.items()}


def same_as_checked(codec: StepCodec, data: bytes, read: RawRequest) -> None:
    expected = checked_read(codec, data)
    assert expected is not None, "the bytes path took a request the checked path refuses"
    flags, (step, raw), outputs, request_id = expected
    assert flags == read.flags
    assert raw and step_of(step) == step_of(read.step)
    assert outputs == codec.model.outputs
    assert request_id == read.request_id


@pytest.mark.parametrize("reads", [False, True], ids=["as a Step", "inputs read"])
@pytest.mark.parametrize("name", MODELS)
def test_a_clients_usual_step_read_from_its_bytes_is_what_the_checked_path_reads(name: str, reads: bool) -> None:
    codec = codec_for(name, reads)
    fixed = codec.model.batch_is_chunk and not any(-1 in t.shape for t in codec.model.inputs)
    for seed, (sequence_id, request_id) in enumerate((s, r) for s in SEQUENCE_IDS for r in REQUEST_IDS):
        data = client_request(codec, sequence_id, request_id, seed).SerializeToString()
        read = read_bytes(codec, data)
        if not fixed:  # an open shape or a whole sequence: always the checked path's
            assert read is None
            continue
        assert read is not None, (sequence_id, request_id)
        assert read.flags.id == sequence_id and read.request_id == request_id
        same_as_checked(codec, data, read)


def _edit(change: Callable[[service_pb2.ModelInferRequest], object]) -> bytes:
    request = client_request(codec_of("lstm256"), 5, "r")
    change(request)
    return request.SerializeToString()


#: A step in every other shape: each is the checked path's to read or refuse.
OTHER_SHAPES: dict[str, Callable[[], bytes]] = {
    "a version": lambda: _edit(lambda r: setattr(r, "model_version", "1")),
    "sequence_start": lambda: _edit(lambda r: setattr(r.parameters["sequence_start"], "bool_param", True)),
    "sequence_start false": lambda: _edit(lambda r: setattr(r.parameters["sequence_start"], "bool_param", False)),
    "sequence_end": lambda: _edit(lambda r: setattr(r.parameters["sequence_end"], "bool_param", True)),
    "no sequence": lambda: _edit(lambda r: r.parameters.clear()),
    "sequence id 0": lambda: _edit(lambda r: setattr(r.parameters["sequence_id"], "int64_param", 0)),
    "a negative id": lambda: _edit(lambda r: setattr(r.parameters["sequence_id"], "int64_param", -3)),
    "a uint64 id": lambda: _edit(lambda r: setattr(r.parameters["sequence_id"], "uint64_param", 5)),
    "a string id": lambda: _edit(lambda r: setattr(r.parameters["sequence_id"], "string_param", "5")),
    "an unknown parameter": lambda: _edit(lambda r: setattr(r.parameters["priority"], "int64_param", 1)),
    "requested outputs": lambda: _edit(lambda r: r.outputs.add(name="y")),
    "typed contents": lambda: _edit(lambda r: (r.inputs[0].contents.fp32_contents.extend([0.0] * 64), r.ClearField("raw_input_contents"))),
    "a wrong datatype": lambda: _edit(lambda r: setattr(r.inputs[0], "datatype", "FP16")),
    "a wrong shape": lambda: _edit(lambda r: r.inputs[0].shape.__setitem__(1, 32)),
    "a wrong name": lambda: _edit(lambda r: setattr(r.inputs[0], "name", "z")),
    "an input parameter": lambda: _edit(lambda r: setattr(r.inputs[0].parameters["k"], "bool_param", True)),
    "short bytes": lambda: _edit(lambda r: r.raw_input_contents.__setitem__(0, bytes(255))),
    "two raw entries": lambda: _edit(lambda r: r.raw_input_contents.append(bytes(256))),
    "an id of 128 bytes": lambda: _edit(lambda r: setattr(r, "id", "x" * 128)),
    "an unknown field": lambda: _edit(lambda r: None) + b"\x98\x06\x01",
    "trailing garbage": lambda: _edit(lambda r: None) + b"\x00",
    "cut short": lambda: _edit(lambda r: None)[:-1],
    "an id not UTF-8": lambda: _edit(lambda r: None).replace(b"\x1a\x01r", b"\x1a\x01\xff"),
    "a padded sequence id": lambda: _edit(lambda r: None).replace(b'"\x11\n\x0bsequence_id\x12\x02\x10\x05', b'"\x12\n\x0bsequence_id\x12\x03\x10\x85\x00'),
}  # fmt: skip


@pytest.mark.parametrize("reads", [False, True], ids=["as a Step", "inputs read"])
@pytest.mark.parametrize("case", list(OTHER_SHAPES))
def test_every_other_shape_is_left_to_the_checked_path(case: str, reads: bool) -> None:
    data = OTHER_SHAPES[case]()
    assert data != _edit(lambda r: None)
    assert read_bytes(codec_for("lstm256", reads), data) is None


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_inputs_read_leave_a_value_that_is_not_finite_to_the_checked_path(value: float) -> None:
    """Where inputs are read, a NaN or Inf goes the checked way (which refuses it, naming the
    tensor); a codec that builds a Step hands it to the driver's decode, which refuses it alike."""
    request = client_request(codec_of("lstm256"), 5, "r")
    values = np.zeros(64, np.float32)
    values[7] = value
    request.raw_input_contents[0] = values.tobytes()
    data = request.SerializeToString()
    assert read_bytes(reading_codec("lstm256"), data) is None
    assert read_bytes(codec_of("lstm256"), data) is not None


@pytest.mark.parametrize("reads", [False, True], ids=["as a Step", "inputs read"])
def test_a_corrupted_request_it_reads_is_one_the_checked_path_reads_alike(reads: bool) -> None:
    codec = codec_for("lstm256", reads)
    valid = [
        client_request(codec, s, r, i).SerializeToString()
        for i, (s, r) in enumerate(zip(SEQUENCE_IDS, (REQUEST_IDS * 3)[: len(SEQUENCE_IDS)], strict=True))
    ]
    taken = refused = 0
    for data in corrupted(valid, 5000, seed=11):
        read = read_bytes(codec, data)
        if read is None:
            refused += 1
        else:
            taken += 1
            same_as_checked(codec, data, read)
    assert taken > 100 and refused > 1000  # flips inside the input data keep a request readable


def exchange(server: ServerThread, requests: list[bytes]) -> list[bytes]:
    """The answers' bytes, one stream, one request at a time."""
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream(STREAM_METHOD)
        return list(call(iter(requests)))


def as_checked(data: bytes) -> bytes:
    """The same request in a shape the bytes path leaves to the checked one (sequence_start: false)."""
    request = service_pb2.ModelInferRequest.FromString(data)
    request.parameters["sequence_start"].bool_param = False
    return request.SerializeToString()


def test_answers_read_from_bytes_are_the_checked_paths_byte_for_byte(lstm256_server: ServerThread) -> None:
    codec = codec_of("lstm256")

    def sequence(shape: Callable[[bytes], bytes]) -> list[bytes]:
        start = client_request(codec, 77, "s", 0)
        start.parameters["sequence_start"].bool_param = True
        steps = [shape(client_request(codec, 77, f"q{i}", i).SerializeToString()) for i in range(1, 6)]
        resent = steps[2]  # answered from the reply cache, marked duplicate
        unknown = shape(client_request(codec, 78, "lost", 9).SerializeToString())  # never started: an error
        end = client_request(codec, 77, "e", 7)
        end.parameters["sequence_end"].bool_param = True
        return exchange(lstm256_server, [start.SerializeToString(), *steps, resent, unknown, end.SerializeToString()])

    from_bytes = sequence(lambda data: data)
    checked = sequence(as_checked)
    assert from_bytes == checked
    answers = [service_pb2.ModelStreamInferResponse.FromString(a) for a in from_bytes]
    assert [a.error_message for a in answers[:7]] == [""] * 7
    assert answers[6].infer_response.parameters["statestream_duplicate"].bool_param
    assert answers[7].error_message.startswith("FAILED_PRECONDITION: sequence 78 is not open")
    assert (answers[7].infer_response.model_name, answers[7].infer_response.id) == ("lstm256", "lost")


@pytest.mark.parametrize("name", MODELS)
def test_a_raw_answer_written_from_the_engines_bytes_is_the_response_read_and_written(name: str) -> None:
    codec = codec_of(name)
    rng = np.random.default_rng(5)
    fixed = not codec.model.softmax_of and [t.name for t in codec.model.outputs] == list(codec.model.return_tensors)
    fixed = fixed and not any(-1 in t.shape for t in codec.model.outputs)
    for seq, request_id, entry, duplicate in [
        (1, "", b"", False),
        (300, "r-9", sequence_entry(b"\x10\x07"), True),
        (2**40, "é", sequence_entry(b"\x10\x80\x01"), False),
    ]:
        outputs = [pb_tensor(t, rng) for t in codec.model.outputs if t.name in codec.model.return_tensors]
        answer = pb.StepResult(seq=seq, outputs=[pb.StepOutput(tensors=outputs)]).SerializeToString()
        if duplicate:
            answer += DUPLICATE
        written = codec.raw_response(request_id, entry, answer, seq, framed=True)
        if not fixed:  # a softmax added, or an open shape: read and written the general way
            assert written is None
            continue
        response = codec.response(request_id, entry, codec.read_answer(answer, seq), codec.model.outputs, True)
        assert written == STREAM_RESULT + varint(len(response)) + response  # the bytes the general way writes
        parsed = service_pb2.ModelStreamInferResponse.FromString(written).infer_response
        assert parsed.parameters["statestream_seq"].int64_param == seq and parsed.id == request_id
        assert parsed.parameters["statestream_duplicate"].bool_param == duplicate
        assert [t.name for t in parsed.outputs] == [t.name for t in codec.model.outputs]
        assert list(parsed.raw_output_contents) == [t.data for t in outputs]
        assert codec.raw_response(request_id, entry, answer, seq, framed=False) == response
        assert codec.raw_response(request_id, entry, answer, seq + 1, framed=True) is None  # another seq's answer


def pb_tensor(spec: OipTensor, rng: np.random.Generator) -> pb.Tensor:
    """A native output of ``spec``'s per-step shape and datatype, as the engine's answer holds it."""
    array = random_input(spec, rng)[0]
    return to_proto(spec.name, array)
