"""Bad input gets a clear error and disturbs nothing: not the session, not other sessions, not the server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.client import Client, StepFailed
from service.tensors import from_proto
from tests.conftest import OfflineLM
from tests.servers import ServerThread

TOLERANCE = 1e-5  # as in test_service_sessions: the float32 contract


def logits_of(result: pb.StepResult) -> np.ndarray:
    return np.stack([from_proto(out.tensors[0]) for out in result.outputs])


def raw_stream(target: str) -> grpc.StreamStreamMultiCallable:
    """The Session method with bytes in and out, so a test can send what no SDK would."""
    channel = grpc.insecure_channel(target)
    return channel.stream_stream(
        "/statestream.v1.SessionService/Session",
        request_serializer=lambda b: b,
        response_deserializer=pb.SessionResponse.FromString,
    )


def open_bytes(model: str = "char_lm") -> bytes:
    return pb.SessionRequest(open=pb.OpenSession(model=model)).SerializeToString()


def step_bytes(seq: int, text: str) -> bytes:
    return pb.SessionRequest(step=pb.Step(seq=seq, text=text)).SerializeToString()


def test_unknown_model_is_not_found_when_the_session_opens(server: ServerThread) -> None:
    with Client(server.target) as client, pytest.raises(grpc.aio.AioRpcError) as refused:
        client.open("no_such_model")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in (refused.value.details() or "")


def test_out_of_vocabulary_character_is_an_in_stream_error_and_changes_nothing(
    server: ServerThread, offline_lm: OfflineLM
) -> None:
    with Client(server.target) as client:
        session = client.open("char_lm", return_tensors=["logits"])
        first = logits_of(session.step(text="ab"))
        with pytest.raises(StepFailed) as failed:
            session.step(text="c\u00e9")  # 'c' is fine, 'é' is not: nothing of the chunk is applied
        assert failed.value.error.code_name == "INVALID_ARGUMENT"
        assert failed.value.error.seq == 2
        assert "position 1" in failed.value.error.message
        after = logits_of(session.step(text="c"))
        session.close()
    np.testing.assert_allclose(np.concatenate([first, after]), offline_lm.logits("abc"), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("bad_seq", [0, 3, 99])
def test_a_wrong_sequence_number_is_refused_and_changes_nothing(
    server: ServerThread, offline_lm: OfflineLM, bad_seq: int
) -> None:
    with Client(server.target) as client:
        session = client.open("char_lm", return_tensors=["logits"])
        first = logits_of(session.step(text="a"))
        reply = session.send_raw(pb.SessionRequest(step=pb.Step(seq=bad_seq, text="z")))  # a hand-made request
        assert reply.WhichOneof("response") == "error"
        assert reply.error.code_name == "FAILED_PRECONDITION"
        assert reply.error.seq == bad_seq
        after = logits_of(session.step(text="b"))
        session.close()
    np.testing.assert_allclose(np.concatenate([first, after]), offline_lm.logits("ab"), atol=TOLERANCE, rtol=0)


def test_an_empty_message_in_a_session_is_invalid_argument_and_the_session_goes_on(server: ServerThread) -> None:
    call = raw_stream(server.target)
    responses = list(
        call(iter([open_bytes(), b"", step_bytes(1, "a"), pb.SessionRequest(close=pb.Close()).SerializeToString()]))
    )
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds == ["opened", "error", "result", "closed"]
    assert responses[1].error.code_name == "INVALID_ARGUMENT"
    assert "empty message" in responses[1].error.message


def test_garbage_bytes_in_a_session_are_invalid_argument_and_the_session_goes_on(server: ServerThread) -> None:
    call = raw_stream(server.target)
    garbage = b"\xff\xff\xff\xff\x0f\x12\x99"
    responses = list(call(iter([open_bytes(), garbage, step_bytes(1, "a")])))
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds == ["opened", "error", "result"]
    assert responses[1].error.code_name == "INVALID_ARGUMENT"
    assert "cannot decode SessionRequest" in responses[1].error.message


@pytest.mark.parametrize("first", [b"", b"\xff\xff\xff\xff\x0f", step_bytes(1, "a")])
def test_a_stream_that_does_not_open_first_ends_with_invalid_argument(server: ServerThread, first: bytes) -> None:
    call = raw_stream(server.target)
    with pytest.raises(grpc.RpcError) as ended:
        list(call(iter([first])))
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_step_with_no_input_or_too_many_steps_is_refused(server: ServerThread) -> None:
    call = raw_stream(server.target)
    too_long = "a" * 257  # the test server's max_chunk is 256
    responses = list(
        call(
            iter(
                [
                    open_bytes(),
                    pb.SessionRequest(step=pb.Step(seq=1)).SerializeToString(),
                    step_bytes(1, too_long),
                    step_bytes(1, ""),
                ]
            )
        )
    )
    errors = [r.error for r in responses[1:]]
    assert [e.code_name for e in errors] == ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"]
    assert "no input" in errors[0].message
    assert "max_chunk=256" in errors[1].message
    assert "empty" in errors[2].message


def test_bad_input_leaves_a_bystander_session_and_the_server_untouched(
    server: ServerThread, offline_lm: OfflineLM
) -> None:
    text = "Friends, Romans, countrymen"
    with Client(server.target) as client:
        bystander = client.open("char_lm", return_tensors=["logits"])
        rows = []
        call = raw_stream(server.target)
        for index, ch in enumerate(text):
            rows.append(logits_of(bystander.step(text=ch)))
            if index % 5 == 0:  # interleave a burst of bad traffic from another client
                list(call(iter([open_bytes(), b"\x00\x01garbage", step_bytes(7, "x"), step_bytes(1, "\u2603")])))
                with pytest.raises(grpc.aio.AioRpcError):
                    client.open("missing")
        bystander.close()
        assert [m.name for m in client.list_models()] == ["char_lm"]  # still serving
    np.testing.assert_allclose(np.concatenate(rows), offline_lm.logits(text), atol=TOLERANCE, rtol=0)


def with_unknown_field(message_bytes: bytes, field_number: int = 99) -> bytes:
    """Appends a varint field this server's proto does not define (as a newer client might send)."""
    return message_bytes + bytes([(field_number << 3) & 0x7F | 0x80, field_number >> 4, 1])


def test_an_unknown_option_at_open_is_refused_with_invalid_argument(server: ServerThread) -> None:
    options = with_unknown_field(pb.SessionOptions(top_k=3).SerializeToString())
    open_request = pb.SessionRequest(
        open=pb.OpenSession(model="char_lm", options=pb.SessionOptions.FromString(options))
    )
    call = raw_stream(server.target)
    with pytest.raises(grpc.RpcError) as refused:
        list(call(iter([open_request.SerializeToString()])))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "unknown field" in refused.value.details()  # type: ignore[attr-defined]


def test_an_unknown_field_in_a_step_is_an_in_stream_error_and_the_session_goes_on(server: ServerThread) -> None:
    step = pb.Step.FromString(with_unknown_field(pb.Step(seq=1, text="a").SerializeToString()))
    call = raw_stream(server.target)
    responses = list(call(iter([open_bytes(), pb.SessionRequest(step=step).SerializeToString(), step_bytes(1, "a")])))
    assert [r.WhichOneof("response") for r in responses] == ["opened", "error", "result"]
    assert responses[1].error.code_name == "INVALID_ARGUMENT"
    assert "field number 99" in responses[1].error.message
    assert responses[2].result.seq == 1  # the refused step consumed no seq


def test_an_unknown_field_in_a_multiplexed_step_refuses_the_message_and_applies_none_of_it(
    server: ServerThread, offline_lm: OfflineLM
) -> None:
    channel = grpc.insecure_channel(server.target)
    create = channel.unary_unary(
        "/statestream.v1.SessionService/CreateSession",
        request_serializer=pb.OpenSession.SerializeToString,
        response_deserializer=pb.SessionOpened.FromString,
    )
    multiplex = channel.stream_stream(
        "/statestream.v1.SessionService/Multiplex",
        request_serializer=lambda b: b,
        response_deserializer=pb.MultiplexResponse.FromString,
    )
    options = pb.SessionOptions(return_tensors=["logits"])
    ids = [create(pb.OpenSession(model="char_lm", options=options)).session_id for _ in range(2)]
    good = pb.SessionStep(session_id=ids[0], step=pb.Step(seq=1, text="a"))
    bad = pb.SessionStep(
        session_id=ids[1], step=pb.Step.FromString(with_unknown_field(pb.Step(seq=1, text="a").SerializeToString()))
    )
    first = pb.MultiplexRequest(steps=[good, bad]).SerializeToString()
    second = pb.MultiplexRequest(steps=[good, pb.SessionStep(session_id=ids[1], step=pb.Step(seq=1, text="a"))])
    refused, answered = list(multiplex(iter([first, second.SerializeToString()])))
    channel.close()
    (error,) = refused.results
    assert error.error.code_name == "INVALID_ARGUMENT"
    assert "unknown field" in error.error.message and "field number 99" in error.error.message
    for result in answered.results:  # seq 1 of both was never applied: it runs now, and not as a duplicate
        assert result.HasField("result") and not result.result.duplicate
        np.testing.assert_allclose(logits_of(result.result), offline_lm.logits("a"), atol=TOLERANCE, rtol=0)


def test_known_fields_encoded_longer_than_protobuf_would_are_accepted(server: ServerThread) -> None:
    """The parser's size check must not refuse a valid request that is merely not canonical."""

    def as_step_request(step: bytes) -> bytes:
        return b"\x1a" + bytes([len(step)]) + step  # SessionRequest.step (field 3), as sent

    text_a = b"\x12\x01a"  # Step.text = "a"
    wide_seq_1 = as_step_request(b"\x08\x81\x80\x00" + text_a)  # seq 1 as a 3-byte varint
    seq_2_written_twice = as_step_request(b"\x08\x07" + b"\x08\x02" + text_a)  # the later seq wins
    for sent, seq in ((wide_seq_1, 1), (seq_2_written_twice, 2)):
        canonical = pb.SessionRequest(step=pb.Step(seq=seq, text="a")).SerializeToString()
        assert pb.SessionRequest.FromString(sent).SerializeToString() == canonical and len(sent) > len(canonical)
    responses = list(raw_stream(server.target)(iter([open_bytes(), wide_seq_1, seq_2_written_twice])))
    assert [r.WhichOneof("response") for r in responses] == ["opened", "result", "result"]
    assert [r.result.seq for r in responses[1:]] == [1, 2]


def test_a_model_failure_is_an_in_stream_internal_error_and_the_session_goes_on(
    server: ServerThread, offline_lm: OfflineLM
) -> None:
    from service.calls import BatchCall

    poison = offline_lm.vocab["z"]

    def fail_when_poisoned(call: BatchCall) -> None:
        if (call.inputs["char_id"] == poison).any():
            raise RuntimeError("simulated ONNX Runtime failure")

    scheduler = server.server.runtimes.get("char_lm").scheduler
    with Client(server.target) as client:
        session = client.open("char_lm", return_tensors=["logits"])
        first = logits_of(session.step(text="a"))
        scheduler.on_call = fail_when_poisoned
        try:
            with pytest.raises(StepFailed) as failed:
                session.step(text="z")
            assert failed.value.error.code_name == "INTERNAL"
            assert "the model failed on this step" in failed.value.error.message
            after = logits_of(session.step(text="b"))
        finally:
            scheduler.on_call = None
        session.close()
    np.testing.assert_allclose(np.concatenate([first, after]), offline_lm.logits("ab"), atol=TOLERANCE, rtol=0)
