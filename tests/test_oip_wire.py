"""The Open Inference Protocol's per-step translation (``oip_tensors.StepCodec``), without a server.

A raw request that is exactly what the model takes becomes a Step parsed from pieces made once;
it must be the Step the checked path (``read_inputs`` + ``OipModel.step``) builds, and every
other request must be accepted or refused exactly as that path does. An answer is written as
bytes; parsed, it must be the ModelInferResponse built here through protobuf from the numbers
the native answer carries (the servicer's recipe before the bytes: outputs raw when the request
was raw, typed otherwise, the sequence id echoed, the seq and duplicate parameters). The
end-to-end behaviour (tritonclient against a real server) is tests/test_oip.py's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from service.answer_bytes import DUPLICATE
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.contract import Manifest
from service.errors import InvalidArgument
from service.servicers.oip_tensors import (
    CONTENTS,
    OipModel,
    OipTensor,
    StepCodec,
    oip_model,
    read_inputs,
    sequence_entry,
)
from service.session_options import ResolvedOptions
from service.tasks import driver_class
from service.tensors import to_proto
from tests.conftest import SHIPPED_MODELS

#: Shipped models the protocol reaches, one of each kind that maps differently.
MODELS = ("lstm256", "laser", "char_lm", "speakers", "speakers_bi", "hopfield_letters", "rbm_digits")
#: A model with two inputs (so order and a missing one can be tried) and an integer output.
TWO_INPUTS = OipModel(
    "two",
    inputs=(OipTensor("a", "FP32", (2, 3)), OipTensor("ids", "INT64", ())),
    outputs=(OipTensor("y", "FP32", (4,)), OipTensor("count", "INT32", ())),
    return_tensors=("y", "count"),
)


def codec_of(name: str) -> StepCodec:
    return StepCodec(oip_model(Manifest.load(SHIPPED_MODELS / name)), "1")


def random_input(spec: OipTensor, rng: np.random.Generator) -> np.ndarray:
    shape = (1, *(3 if d == -1 else d for d in spec.shape))
    dtype = CONTENTS[spec.datatype][0]
    return rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else rng.integers(0, 5, shape).astype(dtype)


def request_of(model: OipModel, arrays: dict[str, np.ndarray], raw: bool) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model.name)
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype=next(t.datatype for t in model.inputs if t.name == name))
        tensor.shape.extend(array.shape)
        if raw:
            request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        else:
            getattr(tensor.contents, CONTENTS[tensor.datatype][1]).extend(array.reshape(-1).tolist())
    return request


def checked_path(model: OipModel, request: oip.ModelInferRequest) -> tuple[pb.Step, bool] | str:
    """What the checked path makes of a request: its Step and rawness, or its refusal's message."""
    try:
        arrays, raw = read_inputs(request, model)
    except InvalidArgument as exc:
        return exc.message
    return model.step(arrays), raw


def codec_path(codec: StepCodec, request: oip.ModelInferRequest) -> tuple[pb.Step, bool] | str:
    try:
        return codec.step(request)
    except InvalidArgument as exc:
        return exc.message


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("raw", [True, False])
def test_a_well_formed_request_becomes_the_step_the_checked_path_builds(name: str, raw: bool) -> None:
    codec = codec_of(name)
    rng = np.random.default_rng(3)
    for _ in range(3):
        arrays = {t.name: random_input(t, rng) for t in codec.model.inputs}
        request = request_of(codec.model, arrays, raw)
        expected = checked_path(codec.model, request)
        assert not isinstance(expected, str), expected
        assert codec_path(codec, request) == expected
        step, was_raw = expected
        assert was_raw == raw and step.seq == 1
        for tensor, array in zip(step.tensors.tensors, arrays.values(), strict=True):  # the bytes sent, unchanged
            sent = array if codec.model.batch_is_chunk else array[0]
            assert tensor.data == sent.astype(sent.dtype.newbyteorder("<")).tobytes()
            assert list(tensor.shape) == list(sent.shape)


def _two(edit: Callable[[oip.ModelInferRequest], None], raw: bool = True) -> oip.ModelInferRequest:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "ids": np.array([7], np.int64)}
    request = request_of(TWO_INPUTS, arrays, raw)
    edit(request)
    return request


def _swap(request: oip.ModelInferRequest) -> None:
    inputs = [oip.ModelInferRequest.InferInputTensor.FromString(t.SerializeToString()) for t in request.inputs]
    raw = list(request.raw_input_contents)
    del request.inputs[:]
    del request.raw_input_contents[:]
    request.inputs.extend(reversed(inputs))
    request.raw_input_contents.extend(reversed(raw))


#: Requests the fast path must leave to the checked path, which accepts or refuses them.
REQUESTS: dict[str, Callable[[], oip.ModelInferRequest]] = {
    "well formed": lambda: _two(lambda r: None),
    "typed": lambda: _two(lambda r: None, raw=False),
    "another order": lambda: _two(_swap),
    "a wrong name": lambda: _two(lambda r: setattr(r.inputs[1], "name", "id")),
    "a wrong datatype": lambda: _two(lambda r: setattr(r.inputs[1], "datatype", "INT32")),
    "a wrong shape": lambda: _two(lambda r: r.inputs[0].shape.__setitem__(2, 2)),
    "a batch of two": lambda: _two(lambda r: r.inputs[0].shape.__setitem__(0, 2)),
    "short bytes": lambda: _two(lambda r: r.raw_input_contents.__setitem__(0, bytes(20))),
    "contents beside raw": lambda: _two(lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 6)),
    "a missing input": lambda: _two(lambda r: (r.inputs.pop(), r.raw_input_contents.pop())),
    "an extra input": lambda: _two(lambda r: (r.inputs.add(name="z", datatype="FP32"), r.raw_input_contents.append(b""))),
    "a raw entry short": lambda: _two(lambda r: r.raw_input_contents.pop()),
    "an input twice": lambda: _two(lambda r: (r.inputs[1].CopyFrom(r.inputs[0]), r.raw_input_contents.__setitem__(1, r.raw_input_contents[0]))),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REQUESTS))
def test_any_other_request_is_accepted_or_refused_as_the_checked_path_does(case: str) -> None:
    request = REQUESTS[case]()
    expected = checked_path(TWO_INPUTS, request)
    assert codec_path(StepCodec(TWO_INPUTS, "1"), request) == expected
    assert isinstance(expected, str) == (case not in ("well formed", "typed", "another order")), expected


# -- answers ----------------------------------------------------------------------------------


def native_outputs(model: OipModel, seed: int) -> dict[str, np.ndarray]:
    """Random native outputs ([*shape] each): the session's return_tensors, and what its kind adds
    (a classifier's probabilities); not a softmax the protocol computes."""
    rng = np.random.default_rng(seed)
    specs = {t.name: t for t in model.outputs}
    added = [n for n in specs if n not in model.return_tensors and not (n == "probabilities" and model.softmax_of)]
    arrays = {}
    for name in [*model.return_tensors, *added]:
        dtype = CONTENTS[specs[name].datatype][0]
        value = rng.standard_normal(specs[name].shape) * 3
        arrays[name] = value.astype(dtype) if dtype.kind == "f" else np.round(value).astype(dtype)
    return arrays


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max())
    return (exp / exp.sum()).astype(np.float32)


def expected_response(
    codec: StepCodec,
    native: dict[str, np.ndarray],
    seq: int,
    duplicate: bool,
    request: oip.ModelInferRequest,
    outputs: list[str],
    raw: bool,
) -> oip.ModelInferResponse:
    """The answer as the servicer built it through protobuf before it wrote bytes."""
    response = oip.ModelInferResponse(model_name=codec.model.name, model_version="1", id=request.id)
    if "sequence_id" in request.parameters:
        response.parameters["sequence_id"].CopyFrom(request.parameters["sequence_id"])
    response.parameters["statestream_seq"].int64_param = seq
    if duplicate:
        response.parameters["statestream_duplicate"].bool_param = True
    for name in outputs:
        spec = next(t for t in codec.model.outputs if t.name == name)
        array = (
            softmax(native[codec.model.softmax_of])
            if name == "probabilities" and codec.model.softmax_of
            else native[name]
        )
        array = array[np.newaxis]
        dtype, field = CONTENTS[spec.datatype]
        out = response.outputs.add(name=name, datatype=spec.datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(array.astype(dtype).tobytes())
        else:
            getattr(out.contents, field).extend(array.reshape(-1).tolist())
    return response


@pytest.mark.parametrize("name", [*MODELS, "two"])
@pytest.mark.parametrize("raw", [True, False])
def test_an_answer_written_as_bytes_is_the_response_built_through_protobuf(name: str, raw: bool) -> None:
    codec = StepCodec(TWO_INPUTS, "1") if name == "two" else codec_of(name)
    names = [t.name for t in codec.model.outputs]
    cases = [
        (1, False, "", None, names),
        (127, False, "r-1", 5, names),
        (128, True, "again", "walrus", names[::-1]),
        (2**40, False, "", 2**63 + 1, names[-1:]),
    ]
    for index, (seq, duplicate, request_id, sequence_id, outputs) in enumerate(cases):
        native = native_outputs(codec.model, index)
        tensors = [to_proto(n, a) for n, a in native.items()]
        kind_field = {"input": "a"} if index % 2 else {}  # a kind's own fields beside the tensors, or none
        answer = pb.StepResult(seq=seq, outputs=[pb.StepOutput(**kind_field, tensors=tensors)]).SerializeToString()
        answer += DUPLICATE if duplicate else b""
        request = oip.ModelInferRequest(model_name=codec.model.name, id=request_id)
        if isinstance(sequence_id, str):
            request.parameters["sequence_id"].string_param = sequence_id
        elif sequence_id is not None:
            field = "uint64_param" if sequence_id >= 2**63 else "int64_param"
            setattr(request.parameters["sequence_id"], field, sequence_id)
        request.outputs.extend(
            oip.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs if outputs is not names
        )
        chosen = codec.requested_outputs(request)
        parameter = request.parameters["sequence_id"].SerializeToString() if sequence_id is not None else None
        entry = sequence_entry(parameter) if parameter is not None else b""
        expected = expected_response(codec, native, seq, duplicate, request, outputs, raw)
        for guess in (seq, seq + 1):  # the seq the step was applied as, and a wrong guess: read the same
            written = codec.response(request_id, entry, codec.read_answer(answer, guess), chosen, raw)
            assert oip.ModelInferResponse.FromString(written) == expected, (seq, guess)


def test_the_engines_own_answers_are_read_and_a_lost_one_has_no_tensors() -> None:
    manifest = Manifest.load(SHIPPED_MODELS / "lstm256")
    driver = driver_class(manifest.task)(manifest)
    codec = codec_of("lstm256")
    options = ResolvedOptions(top_k=0, return_tensors=("y",))
    for steps in (1, 2):  # a chunk (not the protocol's) answers its first step
        y = np.random.default_rng(steps).standard_normal((steps, 64)).astype(np.float32)
        x = pb.TensorInput(tensors=[to_proto("x", np.zeros((steps, 64), np.float32))])
        answer = driver.encode_result(options, pb.Step(seq=9), driver.step_decoder.decode(x, 4), {"y": y})
        for read in (codec.read_answer(answer, 9), codec.read_answer(answer + DUPLICATE, 9)):
            assert read.seq == 9 and read.tensors is not None
            assert read.tensors["y"] == (y[0].tobytes(), (64,), pb.DATA_TYPE_FLOAT32)
        assert not codec.read_answer(answer, 9).duplicate and codec.read_answer(answer + DUPLICATE, 9).duplicate
    lost = codec.read_answer(pb.StepResult(seq=4, duplicate=True).SerializeToString(), 4)
    assert (lost.seq, lost.duplicate, lost.tensors) == (4, True, None)
