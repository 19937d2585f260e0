"""End to end over real gRPC on a loopback port: streamed outputs, isolation, generation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.client import Client
from service.tensors import from_proto
from tests.conftest import OfflineLM
from tests.servers import ServerThread

# float32 LSTM kernels: batch composition and graph fusion move results by ~1e-7; 1e-5 is the contract.
TOLERANCE = 1e-5
TEXT_A = "To be, or not to be, that is the question:"
TEXT_B = "Now is the winter of our discontent\nMade glorious"


def streamed_logits(client: Client, text: str, *, chunk: int = 1) -> np.ndarray:
    """Streams ``text`` over one session, ``chunk`` characters per message; returns every step's logits."""
    session = client.open("char_lm", return_tensors=["logits"])
    rows = []
    for start in range(0, len(text), chunk):
        result = session.step(text=text[start : start + chunk])
        rows.extend(from_proto(out.tensors[0]) for out in result.outputs)
    session.close()
    return np.stack(rows)


def test_models_are_listed_with_their_contract(server: ServerThread) -> None:
    with Client(server.target) as client:
        models = client.list_models()
    assert [m.name for m in models] == ["char_lm"]
    info = models[0]
    assert info.task == "language_model"
    assert info.vocabulary_size == 65
    assert [t.name for t in info.state] == ["h", "c"]
    assert info.state_bytes == 2 * 2 * 32 * 4  # h and c, 2 layers x 32 units of float32
    assert "val_loss_nats_per_char" in info.scores
    assert info.task_info.run == "" and info.task_info.max_run_steps == 0  # a language model has no Run


def test_streamed_outputs_equal_an_offline_onnx_run(server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(server.target) as client:
        got = streamed_logits(client, TEXT_A)
    np.testing.assert_allclose(got, offline_lm.logits(TEXT_A), atol=TOLERANCE, rtol=0)


def test_a_chunked_step_equals_single_steps(server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(server.target) as client:
        got = streamed_logits(client, TEXT_B, chunk=7)
    np.testing.assert_allclose(got, offline_lm.logits(TEXT_B), atol=TOLERANCE, rtol=0)


def test_top_k_is_the_softmax_of_the_logits(server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(server.target) as client:
        session = client.open("char_lm", top_k=3)
        result = session.step(text="T")
        session.close()
    logits = offline_lm.logits("T")[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = np.argsort(-probs)[:3]
    top = result.outputs[0].top
    assert [t.id for t in top] == list(best)
    assert [t.token for t in top] == [offline_lm.manifest.vocabulary[i] for i in best]
    np.testing.assert_allclose([t.prob for t in top], probs[best], atol=1e-6)
    assert result.outputs[0].input == "T"


def test_concurrent_sessions_do_not_affect_each_other(server: ServerThread, offline_lm: OfflineLM) -> None:
    results: dict[str, np.ndarray] = {}

    def run(text: str) -> None:
        with Client(server.target) as client:
            results[text] = streamed_logits(client, text)

    threads = [threading.Thread(target=run, args=(t,)) for t in (TEXT_A, TEXT_B)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for text in (TEXT_A, TEXT_B):
        np.testing.assert_allclose(results[text], offline_lm.logits(text), atol=TOLERANCE, rtol=0)


def test_interleaved_sessions_on_one_channel_stay_separate(server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(server.target) as client:
        a = client.open("char_lm", return_tensors=["logits"])
        b = client.open("char_lm", return_tensors=["logits"])
        rows_a, rows_b = [], []
        for ch_a, ch_b in zip(TEXT_A, TEXT_B, strict=False):
            rows_a.append(from_proto(a.step(text=ch_a).outputs[0].tensors[0]))
            rows_b.append(from_proto(b.step(text=ch_b).outputs[0].tensors[0]))
    n = len(rows_a)
    np.testing.assert_allclose(np.stack(rows_a), offline_lm.logits(TEXT_A[:n]), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.stack(rows_b), offline_lm.logits(TEXT_B[:n]), atol=TOLERANCE, rtol=0)


def generated(client: Client, prompt: str, length: int, **kwargs: object) -> pb.GenerateDone:
    session = client.open("char_lm")
    events = list(session.generate(prompt, length, **kwargs))  # type: ignore[arg-type]
    session.close()
    tokens = [e for e in events if isinstance(e, pb.Token)]
    done = events[-1]
    assert isinstance(done, pb.GenerateDone)
    assert [t.index for t in tokens] == list(range(length))
    assert "".join(t.text for t in tokens) == done.text
    return done


def test_generate_with_a_seed_is_reproducible_and_in_vocabulary(server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(server.target) as client:
        first = generated(client, "ROMEO:", 120, temperature=0.8, seed=7)
        second = generated(client, "ROMEO:", 120, temperature=0.8, seed=7)
        other = generated(client, "ROMEO:", 120, temperature=0.8, seed=8)
    assert first.text == second.text
    assert first.seed == 7 and first.tokens == 120
    assert set(first.text) <= set(offline_lm.manifest.vocabulary)
    assert other.text != first.text  # 120 draws from a trained model's distribution: a collision is negligible


def test_greedy_generation_follows_the_offline_argmax(server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(server.target) as client:
        done = generated(client, "KING", 20, temperature=0.0)
    text = "KING"
    for _ in range(20):
        text += offline_lm.manifest.vocabulary[int(np.argmax(offline_lm.logits(text)[-1]))]
    assert done.text == text[4:]


def test_generate_continues_the_sessions_state(server: ServerThread, offline_lm: OfflineLM) -> None:
    """Generation advances the session: a step after it sees the prompt and every generated token."""
    with Client(server.target) as client:
        session = client.open("char_lm", return_tensors=["logits"])
        done = [e for e in session.generate("ROMEO:", 10, temperature=0.0)][-1]
        assert isinstance(done, pb.GenerateDone)
        after = from_proto(session.step(text="x").outputs[0].tensors[0])
        session.close()
    np.testing.assert_allclose(after, offline_lm.logits("ROMEO:" + done.text + "x")[-1], atol=TOLERANCE, rtol=0)


def test_generate_without_a_prompt_on_a_fresh_session_is_refused_in_stream(server: ServerThread) -> None:
    """Nothing to go on: FAILED_PRECONDITION, and the session goes on (a prompt-less generate after a
    step continues from it). The command-line client refuses an empty --prompt before calling."""
    from service.client import StepFailed

    with Client(server.target) as client:
        session = client.open("char_lm")
        with pytest.raises(StepFailed) as failed:
            list(session.generate("", 5))
        assert failed.value.error.code_name == "FAILED_PRECONDITION" and "give a prompt" in failed.value.error.message
        assert session.step(text="B").seq == 1
        done = list(session.generate("", 3, temperature=0.0))[-1]
        assert isinstance(done, pb.GenerateDone) and done.tokens == 3
        session.close()


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_k": 1000}, {"temperature": float("nan")}])
def test_bad_sampling_parameters_are_refused_in_stream(server: ServerThread, kwargs: dict[str, float]) -> None:
    from service.client import StepFailed

    with Client(server.target) as client:
        session = client.open("char_lm")
        with pytest.raises(StepFailed) as failed:
            list(session.generate("A", 5, **kwargs))  # type: ignore[arg-type]
        assert failed.value.error.code_name == "INVALID_ARGUMENT"
        assert session.step(text="B").seq == 1  # the session goes on, nothing was applied
        session.close()
