"""Fuzzing a live server over real gRPC, and the bugs fuzzing found, kept as regression tests.

The hypothesis-driven runs use loadtest/fuzz.py's ``Fuzzer`` (the same code as the 10,000-case
``python -m loadtest.fuzz``) with a few hundred cases. The server runs the tiny char LM with limits
low enough that the fuzzer reaches both sides of each edge (max_chunk 256, 64 KiB messages,
64 generated tokens). What must hold: only documented status codes (never INTERNAL or UNKNOWN),
refused requests change nothing (the fuzz sessions' state is probed against an offline ONNX
Runtime run of exactly what was applied), a bystander keeps its solo outputs (tests/conftest.OfflineLM,
1e-5), and the server still answers afterwards with no session left open.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest import fuzz
from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.errors import MAX_MESSAGE_CHARS
from service.settings import Settings
from tests.conftest import OfflineLM
from tests.servers import ServerThread

TOLERANCE = 1e-5  # the float32 contract, as in test_service_sessions
LIMITS = fuzz.Limits(max_chunk=256, max_message_bytes=64 * 1024, max_generate_tokens=64)


@pytest.fixture(scope="module")
def fuzz_server(tiny_lm_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(
        Settings(
            models_dir=tiny_lm_dir,
            max_chunk=LIMITS.max_chunk,
            max_message_bytes=LIMITS.max_message_bytes,
            max_generate_tokens=LIMITS.max_generate_tokens,
        )
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reference(tiny_lm_dir: Path) -> fuzz.Reference:
    return fuzz.Reference(tiny_lm_dir / "char_lm")


def run_fuzz(
    server: ServerThread, reference: fuzz.Reference, offline_lm: OfflineLM, cases: int, mix: tuple[tuple[str, int], ...]
) -> fuzz.Summary:
    solo = offline_lm.logits(fuzz.BYSTANDER_TEXT)
    fuzzer = fuzz.Fuzzer(server.target, reference, model="char_lm", bystander_solo=solo, probe_every=10)
    strategies = fuzz.Strategies(reference.vocabulary, reference.input.name, "char_lm", LIMITS)
    try:
        fuzz.run_cases(fuzzer, strategies, cases, mix=mix)
    finally:
        summary = fuzzer.close()
    summary.crashes = 0 if server.thread.is_alive() else 1
    return summary


def assert_clean(summary: fuzz.Summary, cases: int) -> None:
    report = summary.report()
    assert summary.cases == cases, report
    assert summary.violation_count == 0, report
    assert summary.crashes == 0 and summary.healthy_after, report
    assert summary.sessions_left == 0, report
    assert set(summary.codes) <= fuzz.ALLOWED, report
    assert summary.bystander_steps > 0 and summary.bystander_errors == 0, report
    assert summary.bystander_max_diff <= TOLERANCE, report
    assert summary.probes > 0 and summary.probe_max_diff <= TOLERANCE, report
    assert summary.ok, report


def test_fuzz_session_streams_answer_documented_codes_and_refused_messages_change_nothing(
    fuzz_server: ServerThread, reference: fuzz.Reference, offline_lm: OfflineLM
) -> None:
    summary = run_fuzz(fuzz_server, reference, offline_lm, 250, (("stream", 80), ("first", 20)))
    assert_clean(summary, 250)
    assert {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION"} <= set(summary.codes), summary.report()


def test_fuzz_multiplex_and_unary_calls_answer_documented_codes(
    fuzz_server: ServerThread, reference: fuzz.Reference, offline_lm: OfflineLM
) -> None:
    summary = run_fuzz(fuzz_server, reference, offline_lm, 200, (("multiplex", 60), ("unary", 40)))
    assert_clean(summary, 200)
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND"} <= set(summary.codes), summary.report()


def test_fuzz_command_starts_its_own_server_and_prints_a_summary(
    tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fuzz.main(["--cases", "40", "--models-dir", str(tiny_lm_dir)]) == 0
    out = capsys.readouterr().out
    assert "cases                 40" in out
    assert "crashes               0" in out
    assert "RESULT PASS" in out


def test_fuzz_mutations_damage_bytes_as_described() -> None:
    data = bytes(range(10))
    assert fuzz.mutate(data, [("truncate", 0.5, b"\x00")]) == data[:5]
    assert fuzz.mutate(data, [("flip", 0.0, b"\x01")]) == b"\x02" + data[1:]
    assert fuzz.mutate(data, [("insert", 1.0, b"xy")]) == data + b"xy"
    assert fuzz.mutate(data, [("delete", 0.0, b"\x01")]) == data[2:]
    unknown = fuzz.mutate(b"", [("unknown_field", 0.0, b"\x00\x00\x00")])
    assert pb.SessionRequest.FromString(unknown).WhichOneof("request") is None  # parses: field 100 is unknown


# -- regressions: what the fuzzer found ---------------------------------------------------------


def session_call(target: str, requests: list[pb.SessionRequest]) -> tuple[list[pb.SessionResponse], grpc.StatusCode]:
    channel = grpc.insecure_channel(target)
    responses: list[pb.SessionResponse] = []
    code = grpc.StatusCode.OK
    try:
        for response in rpc.SessionServiceStub(channel).Session(iter(requests), timeout=30):
            responses.append(response)
    except grpc.RpcError as ended:
        code = ended.code()  # type: ignore[attr-defined]
    channel.close()
    return responses, code


def opening(**options: object) -> pb.SessionRequest:
    return pb.SessionRequest(open=pb.OpenSession(model="char_lm", options=pb.SessionOptions(**options)))  # type: ignore[arg-type]


def tensor_step(seq: int, shape: list[int], data: bytes, name: str = "char_id") -> pb.SessionRequest:
    tensor = pb.Tensor(name=name, dtype=pb.DATA_TYPE_INT64, shape=shape, data=data)
    return pb.SessionRequest(step=pb.Step(seq=seq, tensors=pb.TensorInput(tensors=[tensor])))


def kinds(responses: list[pb.SessionResponse]) -> list[str]:
    return [str(r.WhichOneof("response")) + (":" + r.error.code_name if r.HasField("error") else "") for r in responses]


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        ([2**32, 2**32], b""),  # the element count wrapped around to 0 in int64 and matched the empty data
        ([2**62, 4, 2], b""),
        ([1] * 70, b"\x00" * 8),  # more dimensions than numpy can hold
    ],
)
def test_fuzz_regression_tensor_shapes_that_overflow_are_invalid_argument(
    fuzz_server: ServerThread, shape: list[int], data: bytes
) -> None:
    """Found by the fuzzer: these ended the stream with UNKNOWN (a numpy ValueError)."""
    responses, code = session_call(
        fuzz_server.target,
        [opening(), tensor_step(1, shape, data), pb.SessionRequest(step=pb.Step(seq=1, text="a"))],
    )
    assert code == grpc.StatusCode.OK
    assert kinds(responses) == ["opened", "error:INVALID_ARGUMENT", "result"]


@pytest.mark.parametrize("bad_id", [1000, 65, -1, 2**40])
def test_fuzz_regression_token_ids_sent_as_a_tensor_obey_the_vocabulary(
    fuzz_server: ServerThread, offline_lm: OfflineLM, bad_id: int
) -> None:
    """Found by the fuzzer: an id past the embedding failed the ONNX Runtime call with UNKNOWN (and
    with it every session batched alongside); a negative id was silently read from the end."""
    text = "What light through yonder window breaks"
    got: list[np.ndarray] = []
    stop = threading.Event()

    def bystander() -> None:
        responses, _ = session_call(
            fuzz_server.target,
            [opening(return_tensors=["logits"])]
            + [pb.SessionRequest(step=pb.Step(seq=i + 1, text=c)) for i, c in enumerate(text)],
        )
        got.extend(np.frombuffer(r.result.outputs[0].tensors[0].data, "<f4") for r in responses[1:])
        stop.set()

    thread = threading.Thread(target=bystander)
    thread.start()
    ids = np.array([3, bad_id], "<i8").tobytes()
    while not stop.is_set():  # keep sending the bad id while the bystander steps
        responses, code = session_call(
            fuzz_server.target, [opening(), tensor_step(1, [2], ids), pb.SessionRequest(step=pb.Step(seq=1, text="a"))]
        )
        assert code == grpc.StatusCode.OK
        assert kinds(responses) == ["opened", "error:INVALID_ARGUMENT", "result"]
        assert f"token id {bad_id}" in responses[1].error.message
    thread.join()
    np.testing.assert_allclose(np.stack(got), offline_lm.logits(text), atol=TOLERANCE, rtol=0)


def test_fuzz_regression_a_duplicate_seq_of_another_kind_is_answered_as_a_duplicate(fuzz_server: ServerThread) -> None:
    """Found by the fuzzer: a Generate resending a Step's seq (or the other way round) ended the
    stream with UNKNOWN (the cached answer was of the other message type)."""
    responses, code = session_call(
        fuzz_server.target,
        [
            opening(),
            pb.SessionRequest(step=pb.Step(seq=1, text="ab")),
            pb.SessionRequest(generate=pb.Generate(seq=2, max_tokens=3, seed=7)),
            pb.SessionRequest(reset=pb.Reset(seq=3)),
            pb.SessionRequest(generate=pb.Generate(seq=1, max_tokens=3, seed=7)),  # seq 1 was a Step
            pb.SessionRequest(step=pb.Step(seq=2, text="c")),  # seq 2 was a Generate
            pb.SessionRequest(step=pb.Step(seq=3, text="c")),  # seq 3 was a Reset
            pb.SessionRequest(generate=pb.Generate(seq=3, max_tokens=3)),
            pb.SessionRequest(step=pb.Step(seq=4, text="d")),
        ],
    )
    assert code == grpc.StatusCode.OK
    answers = [r for r in responses if not r.HasField("token")]
    assert kinds(answers) == [
        "opened",
        "result",
        "generated",
        "reset",
        "generated",
        "result",
        "result",
        "generated",
        "result",
    ]
    assert answers[4].generated.duplicate and answers[4].generated.tokens == 0
    assert answers[5].result.duplicate and not answers[5].result.outputs
    assert answers[6].result.duplicate and answers[7].generated.duplicate
    assert answers[8].result.seq == 4 and not answers[8].result.duplicate


def test_fuzz_regression_an_answer_over_the_message_limit_is_refused_before_the_step_runs(
    fuzz_server: ServerThread,
) -> None:
    """Found by the fuzzer: 256 steps with logits and top-65 made a 270 KB answer; the server applied
    the step, failed to send the answer (RESOURCE_EXHAUSTED) and ended the stream: applied, unanswered."""
    chunk = "a" * LIMITS.max_chunk
    responses, code = session_call(
        fuzz_server.target,
        [
            opening(return_tensors=["logits"], top_k=65),
            pb.SessionRequest(step=pb.Step(seq=1, text=chunk)),
            pb.SessionRequest(step=pb.Step(seq=1, text=chunk, last_only=True)),  # one step's answer fits
            pb.SessionRequest(step=pb.Step(seq=2, text="b")),
        ],
    )
    assert code == grpc.StatusCode.OK
    assert kinds(responses) == ["opened", "error:RESOURCE_EXHAUSTED", "result", "result"]
    assert "max_message_bytes=65536" in responses[1].error.message
    assert responses[2].result.seq == 1 and responses[3].result.seq == 2  # seq 1 was not used up by the refusal


def test_fuzz_regression_a_multiplex_answer_over_the_message_limit_is_refused_whole(fuzz_server: ServerThread) -> None:
    """Found by the fuzzer: 3,000 small entries made a 2 MB answer; every step ran, then the stream died."""
    channel = grpc.insecure_channel(fuzz_server.target)
    sessions = rpc.SessionServiceStub(channel)
    opened = sessions.CreateSession(pb.OpenSession(model="char_lm"))
    many = [pb.SessionStep(session_id=opened.session_id, step=pb.Step(seq=1, text="a"))] * 1000
    (refused,) = list(sessions.Multiplex(iter([pb.MultiplexRequest(steps=many)]), timeout=30))
    (error,) = refused.results
    assert error.error.code_name == "RESOURCE_EXHAUSTED" and "nothing was applied" in error.error.message
    few = [pb.SessionStep(session_id=opened.session_id, step=pb.Step(seq=1, text="a"))] * 3
    (served,) = list(sessions.Multiplex(iter([pb.MultiplexRequest(steps=few)]), timeout=30))
    assert [r.result.duplicate for r in served.results] == [False, True, True]  # seq 1 was still unapplied
    sessions.CloseSession(pb.CloseSessionRequest(session_id=opened.session_id))
    channel.close()


def test_fuzz_regression_error_messages_are_capped_whatever_the_request_quotes(fuzz_server: ServerThread) -> None:
    responses, code = session_call(fuzz_server.target, [opening(), tensor_step(1, [1], b"\x00" * 8, name="x" * 60_000)])
    assert code == grpc.StatusCode.OK
    assert kinds(responses) == ["opened", "error:INVALID_ARGUMENT"]
    assert len(responses[1].error.message) <= MAX_MESSAGE_CHARS
