"""Speaker identification served: a GRU streamed frame by frame, a bidirectional GRU per whole utterance.

Small untrained classifiers (random weights, 8 units) are exported in a fixture through the
task's own exporter and served by a real server on a loopback port; the utterances are real
(the bundled Japanese Vowels test set). References are the same ONNX graphs run offline, so a
served answer must equal them to 1e-6 (the same float32 graph on the same inputs; a row of a
batch does not depend on the others). The shipped models are checked against their manifests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from service import command
from service.api import statestream_pb2 as pb
from service.auth import ANONYMOUS
from service.client import commands, identify
from service.client.sdk import AsyncClient, Client, StepFailed
from service.contract import Manifest
from service.datasets.vowels import load_vowels
from service.drivers.classify import softmax
from service.settings import Settings
from service.tensors import from_proto
from tests.servers import ServerThread
from training.cell_export import export_one_step
from training.nets.cells import Bidirectional
from training.onnx_export import self_check
from training.onnx_replay import open_session, ort_step_fn
from training.tasks.sequence_classifier.evaluate import evaluate, stream_logits
from training.tasks.sequence_classifier.export import manifest_of, parity_inputs
from training.tasks.sequence_classifier.recipe import ClassifierRecipe
from training.tasks.sequence_classifier.train import build_net
from training.tasks.sequence_classifier.whole_sequence import WholeSequenceClassifier

TOLERANCE = 1e-6
ROOT = Path(__file__).resolve().parent.parent
TEST = load_vowels("test")


def _recipe(name: str, net: str) -> ClassifierRecipe:
    return ClassifierRecipe(name=name, task="sequence_classifier", net=net, out="", description=name, hidden=8)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classifiers")
    torch.manual_seed(0)
    for name, net_kind in (("stream", "stream_gru"), ("whole", "bidirectional_gru")):
        recipe = _recipe(name, net_kind)
        net = build_net(recipe)
        export_one_step(net, manifest_of(recipe, net, {}), root / name, parity_inputs=parity_inputs(recipe))
    return root


@pytest.fixture(scope="module")
def classifier_server(classifier_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=classifier_dir))
    yield running
    running.stop()


def _offline_stream(folder: Path, utterance: np.ndarray) -> np.ndarray:
    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(folder / manifest.step_graph))
    return softmax(stream_logits(step, manifest, utterance[None])[0])


def _offline_whole(folder: Path, utterance: np.ndarray) -> np.ndarray:
    """The graph alone on one padded utterance (batch 1)."""
    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(folder / manifest.step_graph))
    padded = np.zeros((1, 1, manifest.inputs[0].shape[0], 12), np.float32)
    padded[0, 0, : len(utterance)] = utterance
    return softmax(step({"frames": padded, "length": np.array([[len(utterance)]])})["logits"][0, 0])


def _probabilities(output: pb.StepOutput) -> np.ndarray:
    return next(from_proto(t) for t in output.tensors if t.name == "probabilities")


# -- the nets ----------------------------------------------------------------------------------


def test_the_padded_masked_bidirectional_gru_is_the_zoos_bidirectional_layer_on_the_real_frames() -> None:
    """Padding must not reach the answer: the masked net's pooled features equal
    ``cells.Bidirectional`` run on the unpadded utterance (float64: the same sums, 1e-12)."""
    torch.manual_seed(3)
    net = WholeSequenceClassifier(input_size=12, hidden_size=5, classes=9, max_frames=32).double()
    layer = Bidirectional(net.forward_cell, net.backward_cell)
    x, lengths = TEST.padded(32)
    for i in (0, 1, 100):  # lengths 20, 26, 16 (among others)
        with torch.no_grad():
            got = net.features(torch.from_numpy(x[i : i + 1]).double(), torch.tensor(lengths[i : i + 1]))[0]
            real = torch.from_numpy(TEST.utterances[i][None]).double()
            y = layer(real, *layer.initial_state(1, dtype=torch.float64))[0][0]  # [T, 2H]
        want = torch.cat([y[-1, :5], y[0, 5:], y[:, :5].mean(0), y[:, 5:].mean(0)])
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


# -- served ------------------------------------------------------------------------------------


def test_a_streamed_utterance_equals_the_offline_run_frame_by_frame(
    classifier_server: ServerThread, classifier_dir: Path
) -> None:
    utterance = TEST.utterances[5]
    want = _offline_stream(classifier_dir / "stream", utterance)
    with Client(classifier_server.target) as client:
        session = client.open("stream")
        answers = [session.step(tensors={"frame": frame[None]}).outputs[0] for frame in utterance]
    got = np.stack([_probabilities(a) for a in answers])
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    assert [a.label for a in answers] == [f"speaker {k + 1}" for k in want.argmax(axis=1)]
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_whole_utterances_batched_with_other_sessions_equal_their_solo_answers(
    classifier_server: ServerThread, classifier_dir: Path
) -> None:
    """Sixteen utterances of different lengths (7 to 29 frames) from sixteen sessions at once."""
    picks = [int(i) for i in np.argsort(TEST.lengths)[:: len(TEST) // 16][:16]]
    assert len({len(TEST.utterances[i]) for i in picks}) > 8

    async def one(client: AsyncClient, index: int) -> pb.StepOutput:
        session = await client.open("whole")
        result = await session.step(tensors={"frames": TEST.utterances[index]})
        return result.outputs[0]

    async def together() -> list[pb.StepOutput]:
        async with AsyncClient(classifier_server.target) as client:
            return list(await asyncio.gather(*(one(client, i) for i in picks)))

    async def alone(index: int) -> pb.StepOutput:
        async with AsyncClient(classifier_server.target) as client:
            return await one(client, index)

    crowd = asyncio.run(together())
    for index, answer in zip(picks, crowd, strict=True):
        solo = asyncio.run(alone(index))
        np.testing.assert_allclose(_probabilities(answer), _probabilities(solo), atol=TOLERANCE)
        want = _offline_whole(classifier_dir / "whole", TEST.utterances[index])
        np.testing.assert_allclose(_probabilities(answer), want, atol=TOLERANCE)
        assert answer.label == solo.label == f"speaker {int(want.argmax()) + 1}"


FRAME = TEST.utterances[0][0]
LONG = np.concatenate([TEST.utterances[0], TEST.utterances[1]])  # 36 frames: over the 32 a call takes


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"frame": FRAME[None, :11]}, "the model takes [K, 12]"),
        ({"frame": np.where(np.arange(12) == 3, np.nan, FRAME)[None].astype(np.float32)}, "NaN or Inf"),
        ({"frame": np.where(np.arange(12) == 3, np.inf, FRAME)[None].astype(np.float32)}, "NaN or Inf"),
        ({"frame": TEST.utterances[0][:2]}, "one frame per Step, got 2"),
        ({"frame": FRAME[None].astype(np.int32)}, "dtype int32"),
        ({"frames": TEST.utterances[0]}, "unknown input tensor(s) ['frames']"),
    ],
)
def test_a_bad_frame_is_refused_in_the_stream_and_the_session_goes_on_unchanged(
    classifier_server: ServerThread, classifier_dir: Path, tensors: dict[str, np.ndarray], message: str
) -> None:
    utterance = TEST.utterances[0]
    want = _offline_stream(classifier_dir / "stream", utterance[:4])
    with Client(classifier_server.target) as client:
        session = client.open("stream")
        for frame in utterance[:2]:
            session.step(tensors={"frame": frame[None]})
        stored = classifier_server.server.store.get(session.id, ANONYMOUS)
        before = stored.runtime.slabs.read_row(stored.row)
        with pytest.raises(StepFailed) as raised:
            session.step(tensors=tensors)
        assert raised.value.error.code_name == "INVALID_ARGUMENT" and message in raised.value.error.message
        after = stored.runtime.slabs.read_row(stored.row)
        assert all(np.array_equal(before[k], after[k]) for k in before)
        assert session.last_seq == 2
        rest = [session.step(tensors={"frame": frame[None]}).outputs[0] for frame in utterance[2:4]]
    np.testing.assert_allclose(np.stack([_probabilities(a) for a in rest]), want[2:4], atol=TOLERANCE)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (LONG, f"the sequence has {len(LONG)} frames; model 'whole' takes at most 32"),
        (TEST.utterances[0][:, :11], "the model takes float32 [T, 12]"),
        (np.where(np.arange(12) == 0, np.nan, TEST.utterances[0]).astype(np.float32), "NaN or Inf"),
        (np.where(np.arange(12) == 0, -np.inf, TEST.utterances[0]).astype(np.float32), "NaN or Inf"),
        (np.zeros((0, 12), np.float32), "at least one time step"),
    ],
)
def test_a_bad_sequence_is_refused_in_the_stream_and_the_next_one_is_answered(
    classifier_server: ServerThread, classifier_dir: Path, frames: np.ndarray, message: str
) -> None:
    good = TEST.utterances[2]
    with Client(classifier_server.target) as client:
        session = client.open("whole")
        session.step(tensors={"frames": good})
        with pytest.raises(StepFailed) as raised:
            session.step(tensors={"frames": frames})
        assert message in raised.value.error.message and raised.value.error.code_name in (
            "INVALID_ARGUMENT",
            "RESOURCE_EXHAUSTED",
        )
        assert session.last_seq == 1
        again = session.step(tensors={"frames": good}).outputs[0]
    np.testing.assert_allclose(_probabilities(again), _offline_whole(classifier_dir / "whole", good), atol=TOLERANCE)


# -- the client command ------------------------------------------------------------------------


def test_client_identify_streams_the_frames_and_prints_the_running_answer(
    classifier_server: ServerThread, classifier_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "running.png"
    argv = ["identify", "--target", classifier_server.target, "--model", "stream", "--index", "9"]
    assert commands.main([*argv, "--json", "--png", str(png)], environ={}) == 0
    summary = json.loads(capsys.readouterr().out)
    want = _offline_stream(classifier_dir / "stream", TEST.utterances[9])
    assert summary["frames"] == len(TEST.utterances[9]) == len(summary["running"])
    assert [r["label"] for r in summary["running"]] == [f"speaker {k + 1}" for k in want.argmax(axis=1)]
    assert summary["truth"] == f"speaker {int(TEST.labels[9]) + 1}"  # the model's name for the class, as "label" is
    assert summary["correct"] == (int(want[-1].argmax()) == TEST.labels[9])
    np.testing.assert_allclose(summary["probabilities"], want[-1], atol=1e-4)  # rounded to 4 decimals
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_client_identify_sends_a_file_whole_to_a_bidirectional_model(
    classifier_server: ServerThread, classifier_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    utterance = TEST.utterances[11]
    path = tmp_path / "utterance.txt"
    path.write_text("\n".join(" ".join(repr(float(v)) for v in frame) for frame in utterance) + "\n")
    argv = ["identify", "--target", classifier_server.target, "--model", "whole", "--file", str(path), "--json"]
    assert commands.main(argv, environ={}) == 0
    summary = json.loads(capsys.readouterr().out)
    want = _offline_whole(classifier_dir / "whole", utterance)
    assert summary["mode"] == "whole" and summary["frames"] == len(utterance) and "truth" not in summary
    assert summary["label"] == f"speaker {int(want.argmax()) + 1}"


def test_a_stateless_model_is_served_under_state_memory_device(classifier_dir: Path) -> None:
    """The bidirectional classifier keeps no state: --state-memory device leaves it on the host."""
    running = ServerThread(Settings(models_dir=classifier_dir, state_memory="device"))
    try:
        utterance = TEST.utterances[3]
        with Client(running.target) as client:
            session = client.open("whole", return_tensors=["logits"])
            got = from_proto(session.step(tensors={"frames": utterance}).outputs[0].tensors[0])
        np.testing.assert_allclose(got, _offline_whole(classifier_dir / "whole", utterance), atol=1e-6)
        assert running.server.runtimes.get("stream").slabs.__class__.__name__ == "DeviceSlabs"
    finally:
        running.stop()


def test_client_identify_refuses_what_it_cannot_send(
    classifier_server: ServerThread, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["identify", "--target", classifier_server.target, "--model", "whole"]

    def exit_code(*extra: str) -> int:  # through the one error path every command runs under
        return command.run(lambda: commands.main([*argv, *extra], environ={}))

    assert len(TEST) == identify.TEST_CASES  # the range --index takes is the bundled test set's
    with pytest.raises(SystemExit) as exited:  # argparse's usage error, before anything is sent
        exit_code("--index", str(len(TEST)))
    assert exited.value.code == command.EXIT_USAGE
    assert f"--index: {len(TEST)} is out of range (0-{len(TEST) - 1})" in capsys.readouterr().err
    long = tmp_path / "long.txt"
    long.write_text("\n".join(" ".join(["0.5"] * 12) for _ in range(40)))
    assert exit_code("--file", str(long)) == command.EXIT_REFUSED
    assert "takes at most 32" in capsys.readouterr().err
    # a file the client can read wrong itself is one usage line, before anything is sent
    narrow, words, binary = tmp_path / "narrow.txt", tmp_path / "words.txt", tmp_path / "binary.txt"
    narrow.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")  # was the server's shape refusal, exit 3
    words.write_text(" ".join(["0.5"] * 12) + "\n0.5 hello\n")  # was 'the same number of numbers'
    binary.write_bytes(b"\xff\xfe\x00\x01")  # was 'the same number of numbers' too
    for path, says in [
        (narrow, "3 numbers a line; model 'whole' takes 12 a frame"),
        (words, "line 2: 'hello' is not a number"),
        (binary, "not a text file (not UTF-8)"),
    ]:
        assert exit_code("--file", str(path)) == command.EXIT_USAGE
        assert capsys.readouterr().err == f"statestream: error: --file {path}: {says}\n"


# -- the shipped models ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["speakers", "speakers_bi"])
def test_the_shipped_model_replays_its_pytorch_trace_and_eval_recomputes_its_scores(name: str) -> None:
    folder = ROOT / "models" / name
    manifest = Manifest.load(folder)
    assert self_check(folder) <= manifest.golden.tolerance  # ONNX Runtime against the steps PyTorch recorded
    assert manifest.training["parity_max_abs_diff"] <= 1e-4
    assert manifest.scores
    assert {k: v for k, v in evaluate(folder).items() if k != "model"} == pytest.approx(manifest.scores, abs=1e-12)


def test_the_shipped_bidirectional_model_is_above_the_floor() -> None:
    assert Manifest.load(ROOT / "models" / "speakers_bi").scores["test_accuracy"] >= 0.96


def test_a_recipe_trains_exports_and_is_scored_from_its_graph(tmp_path: Path) -> None:
    """The task end to end on a tiny run (1 epoch, 4 units): weights, a parity-checked export, scores."""
    from training.recipes import load_recipe
    from training.tasks import ExportOptions, TrainOptions, task_of

    recipe_file = tmp_path / "tiny.toml"
    recipe_file.write_text(
        'name = "tiny_speakers"\ntask = "sequence_classifier"\nnet = "stream_gru"\ndescription = "tiny"\n'
        f'hidden = 4\nepochs = 1\nout = "{tmp_path / "run"}"\n'
    )
    task = task_of("sequence_classifier")
    summary = task.train(load_recipe(recipe_file), TrainOptions(recipe_file=recipe_file, progress=False))
    assert summary["epochs"] == 1 and np.isfinite(summary["final_train_loss"])
    report = task.export(ExportOptions(checkpoint=Path(summary["weights"]), out=tmp_path / "model"))
    manifest = Manifest.load(tmp_path / "model")
    assert "parity max |diff|" in report and manifest.training["parity_max_abs_diff"] <= 1e-4
    assert set(manifest.scores) == {"test_accuracy_final_frame"} | {
        f"test_accuracy_at_{p}pct" for p in range(10, 100, 10)
    }
    assert manifest.training["recipe"]["hidden"] == 4 and manifest.decoding["mode"] == "stream"
