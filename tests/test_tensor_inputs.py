"""The tensor path of a Step (models whose inputs are not tokens): values, chunks, and every way to get it wrong."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.client import Client, StepFailed
from service.settings import Settings
from service.tensors import from_proto, to_proto
from tests import float_rnn
from tests.servers import ServerThread

TOLERANCE = 1e-5  # float32 RNN against a float64 numpy reference over a few steps


@pytest.fixture(scope="module")
def rnn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    models = tmp_path_factory.mktemp("float_models")
    float_rnn.build(models / "float_rnn")
    running = ServerThread(Settings(models_dir=models, max_chunk=64))
    yield running
    running.stop()


def outputs(result: pb.StepResult) -> np.ndarray:
    return np.stack([from_proto(out.tensors[0]) for out in result.outputs])


def inputs(steps: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (steps, float_rnn.FEATURES)).astype(np.float32)


def test_tensor_steps_equal_the_reference_recurrence_per_step_and_chunked(rnn_server: ServerThread) -> None:
    xs = inputs(12)
    with Client(rnn_server.target) as client:
        single = client.open("float_rnn", return_tensors=["y"])
        per_step = np.concatenate([outputs(single.step(tensors={"x": x[None]})) for x in xs])
        chunked = client.open("float_rnn", return_tensors=["y"])
        in_chunks = np.concatenate([outputs(chunked.step(tensors={"x": xs[i : i + 5]})) for i in range(0, 12, 5)])
    np.testing.assert_allclose(per_step, float_rnn.reference(xs), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(in_chunks, float_rnn.reference(xs), atol=TOLERANCE, rtol=0)


def bad_tensor(kind: str) -> pb.Tensor:
    good = inputs(2)
    if kind == "nan":
        good[1, 2] = np.nan
    if kind == "inf":
        good[0, 0] = -np.inf
    tensor = to_proto("x", good)
    if kind == "dtype":
        tensor = to_proto("x", good.astype(np.int32))
    elif kind == "shape":
        tensor = to_proto("x", inputs(2).reshape(3, 2))
    elif kind == "bytes":
        tensor.data = tensor.data[:-4]
    elif kind == "name":
        tensor.name = "z"
    elif kind == "negative":
        tensor.shape[:] = [-2, 3]
    elif kind == "no_steps":
        tensor = to_proto("x", np.zeros((0, float_rnn.FEATURES), np.float32))
    return tensor


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("dtype", "dtype int32, the model takes float32"),
        ("shape", "has shape \\[3, 2\\]"),
        ("bytes", "needs 24 bytes, got 20"),
        ("name", "unknown input tensor"),
        ("negative", "negative dimension"),
        ("no_steps", "empty"),
    ],
)
def test_a_bad_tensor_is_refused_in_stream_and_the_state_is_unchanged(
    rnn_server: ServerThread, kind: str, message: str
) -> None:
    xs = inputs(4)
    with Client(rnn_server.target) as client:
        session = client.open("float_rnn", return_tensors=["y"])
        before = outputs(session.step(tensors={"x": xs[:2]}))
        request = pb.Step(seq=2)
        request.tensors.tensors.append(bad_tensor(kind))
        reply = session.send_raw(pb.SessionRequest(step=request))
        assert reply.error.code_name == "INVALID_ARGUMENT"
        assert reply.error.seq == 2
        assert re.search(message, reply.error.message), reply.error.message
        after = outputs(session.step(tensors={"x": xs[2:]}))
        session.close()
    np.testing.assert_allclose(np.concatenate([before, after]), float_rnn.reference(xs), atol=TOLERANCE, rtol=0)


def test_float64_and_python_floats_are_sent_as_float32_and_answered_as_float32_input_is(
    rnn_server: ServerThread,
) -> None:
    """numpy's default float64 and plain Python floats reach the model as the float32 it takes."""
    xs = np.random.default_rng(2).normal(0, 1, (6, float_rnn.FEATURES))  # float64
    narrow = xs.astype(np.float32)
    with Client(rnn_server.target) as client:
        wide_session = client.open("float_rnn", return_tensors=["y"])
        narrow_session = client.open("float_rnn", return_tensors=["y"])
        from_wide = [
            outputs(wide_session.step(tensors={"x": xs[:3]})),
            outputs(wide_session.step(tensors={"x": xs[3:].tolist()})),
        ]
        from_narrow = [
            outputs(narrow_session.step(tensors={"x": narrow[:3]})),
            outputs(narrow_session.step(tensors={"x": narrow[3:]})),
        ]
    np.testing.assert_array_equal(np.concatenate(from_wide), np.concatenate(from_narrow))  # the same values arrived
    np.testing.assert_allclose(np.concatenate(from_wide), float_rnn.reference(narrow), atol=TOLERANCE, rtol=0)


def test_what_the_wire_cannot_carry_is_refused_before_sending_and_the_session_goes_on(rnn_server: ServerThread) -> None:
    xs = inputs(2)
    too_wide = xs.astype(np.float64)
    too_wide[1, 0] = -1e39  # finite in float64, infinite in float32
    with Client(rnn_server.target) as client:
        session = client.open("float_rnn", return_tensors=["y"])
        with pytest.raises(ValueError, match=r"tensor 'x': -1e\+39 is beyond float32's range \(±3\.403e\+38\)"):
            session.step(tensors={"x": too_wide})
        with pytest.raises(
            ValueError, match="tensor 'x': dtype bool cannot be sent; give floats, int64, int32 or int16"
        ):
            session.step(tensors={"x": xs > 0})
        result = session.step(tensors={"x": xs})
        session.close()
    assert result.seq == 1  # neither refusal was sent: seq 1 was still free
    np.testing.assert_allclose(outputs(result), float_rnn.reference(xs), atol=TOLERANCE, rtol=0)


def test_text_sent_to_a_tensor_model_is_refused_and_tensors_to_a_text_model_are_checked(
    rnn_server: ServerThread,
) -> None:
    with Client(rnn_server.target) as client:
        session = client.open("float_rnn")
        with pytest.raises(StepFailed, match="does not take text or token ids"):
            session.step(text="abc")
        with pytest.raises(StepFailed, match="missing input tensor"):
            session.step(tensors={})
        session.close()


def test_a_model_without_a_vocabulary_cannot_generate(rnn_server: ServerThread) -> None:
    with Client(rnn_server.target) as client:
        session = client.open("float_rnn")
        with pytest.raises(StepFailed, match="does not generate tokens"):
            list(session.generate("x", 3))
        session.close()


def test_the_float_model_builder_passes_the_contract(tmp_path: Path) -> None:
    from service.registry import LoadedModel
    from service.tasks import driver_class

    model = LoadedModel.from_folder(float_rnn.build(tmp_path / "m"), Settings(), driver_class)
    assert model.manifest.state_bytes == float_rnn.HIDDEN * 4
