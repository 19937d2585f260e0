"""A Session stream's one-time-step Step read from its bytes (``StepBytes``), without a message.

The server reads a streamed step of a tensor model straight from the bytes that arrived and
parses anything else as before. Proved here: on requests written by protobuf itself (seqs of
every varint width, with and without ``last_only``), the bytes read give what the checked path
(parse, the unknown-field check, the full tensor checks) gives; every other shape is left to
the checked path; every one of thousands of seeded corruptions it still reads is one the checked
path reads alike; only kinds that decode steps the default way read steps so; and over a real
server the answers, errors included, are byte for byte those of the same requests sent in a
shape the bytes path leaves to the checked one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import grpc
import numpy as np
import pytest

from loadtest.messages import SESSION_METHOD, open_request
from service.answer_bytes import length_delimited, varint
from service.api import statestream_pb2 as pb
from service.contract import Manifest, TensorSpec
from service.drivers.step_bytes import StepBytes, read_varint
from service.drivers.steps import decode_tensors
from service.errors import StatestreamError
from service.servicers.sessions import read_step_request
from service.servicers.wire import Malformed, request_parser
from service.settings import Settings
from service.tasks import driver_class
from service.tensors import to_proto
from tests.conftest import SHIPPED_MODELS
from tests.corruptions import corrupted
from tests.servers import ServerThread

parse = request_parser(pb.SessionRequest)
MAX_CHUNK = 4096
#: seqs of every varint length a seq below 2**63 takes (1 to 9 bytes).
SEQS = [1, 127, 128, 16_384, 2**21, 2**28, 2**35, 2**42, 2**49, 2**56, 2**63 - 1]
#: A model with a float input [2, 3] and an integer input [] (per time step).
TWO_INPUTS = cast(
    Manifest, SimpleNamespace(inputs=(TensorSpec("x", "float32", (2, 3)), TensorSpec("ids", "int64", ())))
)
LSTM = Manifest.load(SHIPPED_MODELS / "lstm256")
MANIFESTS = {"two inputs": TWO_INPUTS, "lstm256": LSTM}


def arrays_of(manifest: Manifest, steps: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of ``steps`` time steps for every input of ``manifest``, in its order."""
    rng = np.random.default_rng(seed)
    return {
        spec.name: (rng.standard_normal((steps, *spec.shape)) * 10).astype(spec.np_dtype) for spec in manifest.inputs
    }


def request(seq: int, arrays: dict[str, np.ndarray], last_only: bool = False) -> pb.SessionRequest:
    tensors = pb.TensorInput(tensors=[to_proto(name, array) for name, array in arrays.items()])
    return pb.SessionRequest(step=pb.Step(seq=seq, tensors=tensors, last_only=last_only))


def checked(manifest: Manifest, data: bytes) -> tuple[int, bool, dict[str, tuple[str, tuple[int, ...], bytes]]] | None:
    """What the checked path makes of ``data``: the seq, last_only and inputs of a step it takes."""
    message = parse(data)
    if isinstance(message, Malformed) or message.WhichOneof("request") != "step":
        return None
    step = message.step
    if step.WhichOneof("input") != "tensors":
        return None
    try:
        decoded = decode_tensors(manifest, step.tensors, MAX_CHUNK)
    except StatestreamError:
        return None
    return step.seq, step.last_only, {n: (a.dtype.str, a.shape, a.tobytes()) for n, a in decoded.arrays.items()}


def read(manifest: Manifest, data: bytes) -> tuple[int, bool, dict[str, tuple[str, tuple[int, ...], bytes]]] | None:
    """What the bytes path reads of ``data``, in ``checked``'s terms; None where it leaves it."""
    got = read_step_request(data, StepBytes(manifest))
    if got is None:
        return None
    assert got.inputs.steps == 1
    for array in got.inputs.arrays.values():  # what the scheduler and ORT get: aligned, C order
        assert array.flags.aligned and array.flags.c_contiguous
    arrays = {n: (a.dtype.str, a.shape, a.tobytes()) for n, a in got.inputs.arrays.items()}
    return got.seq, got.last_only, arrays


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_a_streamed_step_written_by_protobuf_is_read_as_the_checked_path_reads_it(name: str) -> None:
    manifest = MANIFESTS[name]
    for index, seq in enumerate(SEQS):
        for last_only in (False, True):
            data = request(seq, arrays_of(manifest, seed=index), last_only).SerializeToString()
            got = read(manifest, data)
            assert got is not None, (seq, last_only)
            assert got == checked(manifest, data)
            assert got[:2] == (seq, last_only)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**21, 2**35, 2**63 - 1])
@pytest.mark.parametrize("after", [b"", b"\x07"])
def test_a_varint_is_read_as_protobuf_writes_it_and_a_padded_or_cut_one_is_not(value: int, after: bytes) -> None:
    written = varint(value)
    assert read_varint(b"\x01" + written + after, 1, 9) == (value, 1 + len(written))
    assert read_varint(written[:-1], 0, 9) == (-1, 0)  # cut short
    assert read_varint(written + after, 0, len(written) - 1) == (-1, 0) or len(written) == 1  # past the limit
    padded = written[:-1] + bytes([written[-1] | 0x80, 0x00])
    assert read_varint(padded + after, 0, 10) == (-1, 0)
    assert pb.Step.FromString(b"\x08" + padded).seq == value  # protobuf reads it: the checked path's to take


def _two(change: Callable[[pb.SessionRequest], object]) -> bytes:
    message = request(5, arrays_of(TWO_INPUTS))
    change(message)
    return message.SerializeToString()


def _step_field(extra: bytes) -> bytes:
    """The usual request with ``extra`` bytes at the end of its Step (an explicit or unknown field)."""
    step = request(5, arrays_of(TWO_INPUTS)).step.SerializeToString()
    return length_delimited(3, step + extra)


#: A request in every other shape: each is the checked path's to read or refuse.
OTHER_SHAPES: dict[str, Callable[[], bytes]] = {
    "a chunk of two steps": lambda: request(5, arrays_of(TWO_INPUTS, 2)).SerializeToString(),
    "seq 0": lambda: _two(lambda r: setattr(r.step, "seq", 0)),
    "a seq of 10 bytes": lambda: _two(lambda r: setattr(r.step, "seq", 2**63)),
    "another order": lambda: _two(lambda r: r.step.tensors.tensors.reverse()),
    "a missing tensor": lambda: _two(lambda r: r.step.tensors.tensors.pop()),
    "an extra tensor": lambda: _two(lambda r: r.step.tensors.tensors.append(to_proto("z", np.zeros(1, np.float32)))),
    "a wrong name": lambda: _two(lambda r: setattr(r.step.tensors.tensors[1], "name", "id")),
    "a wrong dtype": lambda: _two(lambda r: (setattr(r.step.tensors.tensors[1], "dtype", pb.DATA_TYPE_INT32), setattr(r.step.tensors.tensors[1], "data", bytes(4)))),
    "short data": lambda: _two(lambda r: setattr(r.step.tensors.tensors[0], "data", bytes(20))),
    "NaN": lambda: request(5, {"x": np.full((1, 2, 3), np.nan, np.float32), "ids": np.zeros(1, np.int64)}).SerializeToString(),
    "Inf": lambda: request(5, {"x": np.full((1, 2, 3), -np.inf, np.float32), "ids": np.zeros(1, np.int64)}).SerializeToString(),
    "huge finite values": lambda: request(5, {"x": np.full((1, 2, 3), 3e38, np.float32), "ids": np.zeros(1, np.int64)}).SerializeToString(),
    "text": lambda: _two(lambda r: setattr(r.step, "text", "a")),
    "token ids": lambda: _two(lambda r: r.step.tokens.ids.append(3)),
    "an explicit last_only false": lambda: _step_field(b"\x28\x00"),
    "an unknown Step field": lambda: _step_field(b"\x98\x06\x01"),
    "a padded seq": lambda: length_delimited(3, _two(lambda r: None)[2:].replace(b"\x08\x05", b"\x08\x85\x00", 1)),
    "a padded length": lambda: b"\x1a" + bytes([_two(lambda r: None)[1] | 0x80, 0x00]) + _two(lambda r: None)[2:],
    "trailing garbage": lambda: _two(lambda r: None) + b"\x00",
    "cut short": lambda: _two(lambda r: None)[:-1],
    "values cut short, lengths agreeing": lambda: length_delimited(3, _two(lambda r: None)[2:-1]),
    "a close": lambda: pb.SessionRequest(close=pb.Close()).SerializeToString(),
    "an empty request": lambda: b"",
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:overflow encountered in dot")  # the server's own filter, which pytest resets
@pytest.mark.parametrize("case", list(OTHER_SHAPES))
def test_every_other_shape_is_left_to_the_checked_path(case: str) -> None:
    data = OTHER_SHAPES[case]()
    assert data != _two(lambda r: None)
    assert read(TWO_INPUTS, data) is None
    if case in ("huge finite values", "an explicit last_only false", "a padded seq", "a padded length"):
        assert checked(TWO_INPUTS, data) is not None  # valid steps, only not the shape read here


@pytest.mark.filterwarnings("ignore:overflow encountered in dot")
def test_a_corrupted_request_it_reads_is_one_the_checked_path_reads_alike() -> None:
    valid = [request(seq, arrays_of(TWO_INPUTS, seed=i), i % 2 == 1).SerializeToString() for i, seq in enumerate(SEQS)]
    taken = left = 0
    for data in corrupted(valid, 5000, seed=13):
        got = read(TWO_INPUTS, data)
        if got is None:
            left += 1
            continue
        taken += 1
        assert got == checked(TWO_INPUTS, data), data.hex()
    assert taken > 300 and left > 1000  # flips inside the values keep a request readable


def test_only_kinds_that_decode_steps_the_default_way_read_them_from_bytes() -> None:
    """A kind with a decoding of its own (text, frames, audio, a forecast's window) is never bypassed;
    for a kind that reads steps so, what is read is what its own decode_step makes of the step."""
    readers = {}
    for folder in sorted(SHIPPED_MODELS.iterdir()):
        if not (folder / "manifest.json").is_file():
            continue
        manifest = Manifest.load(folder)
        driver = driver_class(manifest.task)(manifest)
        readers[manifest.task] = driver.step_bytes is not None
        if driver.step_bytes is not None:
            data = request(9, arrays_of(manifest)).SerializeToString()
            got = read(manifest, data)
            decoded = driver.decode_step(parse(data).step, MAX_CHUNK)
            assert got is not None and got[2] == {
                n: (a.dtype.str, a.shape, a.tobytes()) for n, a in decoded.arrays.items()
            }
    assert {task for task, has in readers.items() if has} == {"sequence_model", "associative_memory"}, readers


def exchange(server: ServerThread, requests: list[bytes]) -> list[bytes]:
    """The answers' bytes to one Session stream's requests, one at a time; the opening's left out."""
    with grpc.insecure_channel(server.target) as channel:
        call = channel.stream_stream(SESSION_METHOD)
        return list(call(iter([open_request("lstm256"), *requests])))[1:]


def as_checked(data: bytes) -> bytes:
    """The same request in a shape the bytes path leaves to the checked one (an explicit last_only false)."""
    message = pb.SessionRequest.FromString(data)
    if message.step.last_only:
        return data
    return length_delimited(3, message.step.SerializeToString() + b"\x28\x00")


def test_answers_to_steps_read_from_bytes_are_the_checked_paths_byte_for_byte(lstm256_server: ServerThread) -> None:
    steps = [request(seq, arrays_of(LSTM, seed=seq), seq == 4).SerializeToString() for seq in range(1, 6)]
    nan = {"x": np.full((1, 64), np.nan, np.float32)}
    requests = [*steps, steps[2], request(7, arrays_of(LSTM)).SerializeToString(), request(6, nan).SerializeToString()]
    from_bytes = exchange(lstm256_server, requests)
    from_message = exchange(lstm256_server, [as_checked(data) for data in requests])
    assert from_bytes == from_message
    answers = [pb.SessionResponse.FromString(a) for a in from_bytes]
    assert [a.result.seq for a in answers[:6]] == [1, 2, 3, 4, 5, 3]
    assert answers[5].result.duplicate and not answers[2].result.duplicate
    assert answers[6].error.code_name == "FAILED_PRECONDITION" and "skips ahead" in answers[6].error.message
    assert answers[7].error.code_name == "INVALID_ARGUMENT" and "NaN or Inf" in answers[7].error.message
    outputs = np.frombuffer(answers[0].result.outputs[0].tensors[0].data, np.float32)
    assert outputs.shape == (64,) and np.isfinite(outputs).all()


def test_a_kind_that_reads_steps_its_own_way_still_answers_over_a_stream(tmp_path: Path) -> None:
    """char_lm's Session stream (text steps, never read from bytes) still answers each step."""
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "char_lm", models / "char_lm")
    running = ServerThread(Settings(models_dir=models))
    try:
        with grpc.insecure_channel(running.target) as channel:
            call = channel.stream_stream(SESSION_METHOD)
            steps = [pb.SessionRequest(step=pb.Step(seq=s, text="ab")).SerializeToString() for s in (1, 2)]
            answers = [pb.SessionResponse.FromString(a) for a in call(iter([open_request("char_lm"), *steps]))]
    finally:
        running.stop()
    assert [a.WhichOneof("response") for a in answers] == ["opened", "result", "result"]
    assert [len(a.result.outputs) for a in answers[1:]] == [2, 2]
