"""``statestream eval`` for the voice-activity task: the shipped Silero folders' scores are what the
scorer recomputes from their graphs, the scorer is deterministic and not blind, and its eval set
is the one shipped (training/tasks/voice_activity/)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.metrics import roc_auc_score

from service.cli import main as statestream_main
from service.contract import Manifest
from tests.conftest import ROOT
from training.tasks.voice_activity import calls as test_calls
from training.tasks.voice_activity.eval_set import EVAL_SET, load_utterances
from training.tasks.voice_activity.evaluate import evaluate

MODELS = ("silero_vad", "silero_vad_8k")
#: The recorded scores went through JSON (17 significant digits): they equal a rerun's to rounding.
RECORDED_TOLERANCE = 1e-9
#: Two runs on one machine: the same ONNX Runtime calls on the same arrays, so the same numbers.
RERUN_TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, Any]]:
    return {model: evaluate(ROOT / "models" / model) for model in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_the_shipped_scores_are_what_eval_recomputes_from_the_graph(
    scores: dict[str, dict[str, Any]], model: str
) -> None:
    recorded = Manifest.load(ROOT / "models" / model).scores
    recomputed = {key: value for key, value in scores[model].items() if key != "model"}
    assert scores[model]["model"] == model
    assert recorded.keys() == recomputed.keys()
    assert recorded == pytest.approx(recomputed, abs=RECORDED_TOLERANCE)


def test_eval_json_prints_the_scores_and_a_rerun_gives_the_same_numbers(
    scores: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert statestream_main(["eval", "--model", str(ROOT / "models" / "silero_vad"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed.keys() == scores["silero_vad"].keys()
    assert printed.pop("model") == "silero_vad"
    assert printed == pytest.approx(
        {k: v for k, v in scores["silero_vad"].items() if k != "model"}, abs=RERUN_TOLERANCE
    )


def test_silero_scores_clear_an_honest_floor_and_fall_as_the_noise_rises(scores: dict[str, dict[str, Any]]) -> None:
    """Floors well under what Silero scores (0.95-0.99 AUC), over what a blind scorer could give."""
    for model in MODELS:
        got = scores[model]
        assert got["clean_auc"] >= 0.95 and got["clean_f1"] >= 0.9, model
        assert got["snr5_auc"] >= 0.9 and got["snr5_f1"] >= 0.85, model
        assert got["clean_auc"] > got["snr10_auc"] > got["snr5_auc"], model
        assert got["snr10_utterances_found"] >= 0.9 and got["snr10_false_segments"] <= 2, model


def constant_half_graph(path: Path, frame: int, carry: int) -> None:
    """A graph with Silero's wrapper signature whose probability is 0.5 whatever it hears."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "half"], ["output"]),
        helper.make_node("Identity", ["state"], ["stateN"]),
        helper.make_node("Identity", ["input.carried"], ["input.carried_next"]),
    ]

    def value(name: str, shape: list[str | int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes,
        "constant_half",
        [
            value("input", ["batch", 1, frame]),
            value("input.carried", ["batch", carry]),
            value("state", ["batch", 2, 128]),
        ],
        [
            value("input.carried_next", ["batch", carry]),
            value("output", ["batch", 1, 1]),
            value("stateN", ["batch", 2, 128]),
        ],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_scorer_is_not_blind_a_graph_that_always_says_half_scores_far_lower(
    scores: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    folder = tmp_path / "constant"
    shutil.copytree(ROOT / "models" / "silero_vad", folder)
    constant_half_graph(folder / "step.onnx", 512, 64)
    blind, silero = evaluate(folder), scores["silero_vad"]
    for condition in test_calls.CONDITIONS:
        assert blind[f"{condition}_auc"] == 0.5  # every frame tied: each pair counts half
        assert blind[f"{condition}_f1"] < silero[f"{condition}_f1"] - 0.15  # p >= 0.5 everywhere: all "speech"
    # One segment from the first frame to the end: only each call's first utterance starts one.
    assert blind["snr10_utterances_found"] == pytest.approx(1 / 12) and blind["snr10_false_segments"] == 0


def test_the_scores_on_shuffled_labels_are_chance() -> None:
    calls = test_calls.make_calls(16000, 512)
    loud = np.sqrt(np.mean(np.square(calls.audio[0].astype(np.float64)), axis=-1)).ravel()  # a fair detector
    labels = calls.labels.ravel()
    shuffled = np.random.default_rng(0).permutation(labels)
    assert roc_auc_score(labels, loud) > 0.95
    assert roc_auc_score(shuffled, loud) == pytest.approx(0.5, abs=0.03)


def test_the_shipped_eval_set_is_the_one_its_provenance_names() -> None:
    note = EVAL_SET.with_suffix(".md").read_text()
    assert hashlib.sha256(EVAL_SET.read_bytes()).hexdigest() in note
    assert EVAL_SET.stat().st_size <= 1_500_000
    for rate in (16000, 8000):
        utterances = load_utterances(rate)
        assert len(utterances) == 12
        pcm = np.concatenate(utterances) * 32768
        assert hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest() in note


@pytest.mark.parametrize("rate, frame", [(16000, 512), (8000, 256)])
def test_the_labels_mark_the_utterances_and_not_the_pauses(rate: int, frame: int) -> None:
    calls = test_calls.make_calls(rate, frame)
    for labels, utterances in zip(calls.labels, calls.utterances, strict=True):
        speech = np.flatnonzero(labels)
        inside = np.zeros(len(labels), bool)
        for start, end in utterances:
            inside[start // frame : -(-end // frame)] = True
            assert labels[start // frame : -(-end // frame)].any()  # every utterance has speech frames
        assert inside[speech].all()  # no speech frame in a pause
        assert 0.4 < labels.mean() < 0.8


def test_eval_of_a_voice_activity_folder_at_a_rate_the_set_lacks_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "vad_44k"
    shutil.copytree(ROOT / "models" / "silero_vad", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["training"]["spec"]["constant"]["sr"] = 44100
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert statestream_main(["eval", "--model", str(folder), "--record"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("statestream: error: model 'silero_vad'") and "sr 44100" in err and "\n" not in err
    assert json.loads((folder / "manifest.json").read_text()) == manifest  # nothing recorded
