"""Export of the character LM: ONNX/PyTorch parity, the written folder, refusals, ONNX scoring.

A tiny LSTM (hidden 32) is trained for a few dozen steps on a slice of the corpus and
exported once per module; each test then checks one promise of ``training.onnx_export``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.contract import ContractError, Manifest, check_graph, replay_golden
from service.datasets import CharCorpus, load_shakespeare
from training.checkpoints import WEIGHTS_FILE
from training.cli import eval_command, export_command
from training.loop_config import LoopConfig
from training.loops import seed_everything, stream_loss, train
from training.nets import StepNet
from training.onnx_export import ParityError
from training.onnx_replay import open_session
from training.tasks.language_model import export as export_module
from training.tasks.language_model.evaluate import val_loss_from_onnx
from training.tasks.language_model.export import GOLDEN_TEXT, export_char_lm
from training.tasks.language_model.net import CharLSTM

#: ONNX Runtime and PyTorch both compute in float32 but with different kernels; over 1,000
#: carried steps their logits differ by ~1e-6, so 1e-4 (the golden tolerance) has wide margin
#: yet catches any real difference (a wrong weight moves logits by > 1e-2).
PARITY_TOLERANCE = 1e-4
PARITY_CHARS = 1000
MODEL_ARGS = {"vocab_size": 65, "embed": 16, "hidden": 32, "layers": 2, "dropout": 0.1}


@dataclass(frozen=True)
class Exported:
    net: CharLSTM
    checkpoint: Path
    folder: Path


@pytest.fixture(scope="module")
def corpus() -> CharCorpus:
    return load_shakespeare()


@pytest.fixture(scope="module")
def exported(corpus: CharCorpus, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    run = tmp_path_factory.mktemp("run")
    seed_everything(11)
    net = CharLSTM(**MODEL_ARGS)  # type: ignore[arg-type]
    config = LoopConfig(batch=8, bptt=32, steps=40, lr=1e-2, warmup_steps=4, seed=11, eval_every=40, out=str(run))
    metadata = {"model": MODEL_ARGS, "vocabulary": "".join(corpus.vocab.chars), "recipe": {}, "recipe_file": ""}
    train(net, corpus.train_ids[:40_000], corpus.val_ids[:8_000], config, metadata=metadata, progress=False)
    folder = tmp_path_factory.mktemp("models") / "char_lm"
    export_char_lm(run / WEIGHTS_FILE, folder)
    net.eval()
    return Exported(net=net, checkpoint=run / WEIGHTS_FILE, folder=folder)


def test_onnx_matches_torch_step_by_step_over_1000_chars(corpus: CharCorpus, exported: Exported) -> None:
    session = open_session(exported.folder / "step.onnx")
    ids = corpus.val_ids[:PARITY_CHARS]
    h, c = exported.net.initial_state(1)
    oh, oc = h.numpy(), c.numpy()
    worst = 0.0
    with torch.no_grad():
        for char in ids:
            x = np.array([[char]], dtype=np.int64)
            logits, h, c = exported.net(torch.from_numpy(x), h, c)
            got, oh, oc = session.run(["logits", "h_out", "c_out"], {"char_id": x, "h": oh, "c": oc})
            worst = max(worst, float(np.abs(got - logits.numpy()).max()))
    assert worst <= PARITY_TOLERANCE


def test_chunked_batched_call_matches_single_steps(corpus: CharCorpus, exported: Exported) -> None:
    session = open_session(exported.folder / "step.onnx")
    rows = np.stack([corpus.val_ids[:50], corpus.val_ids[1000:1050], corpus.val_ids[2000:2050]])
    zeros = np.zeros((3, 2, 32), dtype=np.float32)
    chunked = session.run(["logits"], {"char_id": rows, "h": zeros, "c": zeros})[0]
    assert chunked.shape == (3, 50, 65)
    for r in range(3):
        h, c = zeros[:1], zeros[:1]
        for t in range(50):
            step, h, c = session.run(None, {"char_id": rows[r : r + 1, t : t + 1], "h": h, "c": c})
            assert np.abs(step[0, 0] - chunked[r, t]).max() <= PARITY_TOLERANCE


def test_written_folder_passes_the_servers_load_checks(corpus: CharCorpus, exported: Exported) -> None:
    manifest = Manifest.load(exported.folder)
    session = open_session(exported.folder / manifest.step_graph)
    check_graph(manifest, session)
    assert replay_golden(manifest, session) <= manifest.golden.tolerance
    assert (manifest.name, manifest.version, manifest.task) == ("char_lm", "1", "language_model")
    assert manifest.vocabulary == list(corpus.vocab.chars)
    assert [s.shape for s in manifest.state] == [(2, 32), (2, 32)]
    assert manifest.golden.inputs["char_id"] == corpus.vocab.encode(GOLDEN_TEXT).tolist()
    assert len(manifest.golden.outputs["logits"]) == len(GOLDEN_TEXT) == 16
    batch_dim, time_dim = session.get_inputs()[0].shape
    assert isinstance(batch_dim, str) and isinstance(time_dim, str)  # dynamic, named axes
    graph = onnx.load(str(exported.folder / manifest.step_graph))
    assert graph.opset_import[0].version >= 17
    assert manifest.training["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert (exported.folder / "loss_curve.png").exists()


def perturb_weight(folder: Path) -> None:
    graph = onnx.load(str(folder / "step.onnx"))
    biggest = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(biggest) + np.float32(0.5)
    biggest.CopyFrom(onnx.numpy_helper.from_array(values, biggest.name))
    onnx.save(graph, str(folder / "step.onnx"))


def rename_logits(folder: Path) -> None:
    graph = onnx.load(str(folder / "step.onnx"))
    for node in graph.graph.node:
        node.output[:] = ["scores" if name == "logits" else name for name in node.output]
    for output in graph.graph.output:
        if output.name == "logits":
            output.name = "scores"
    onnx.save(graph, str(folder / "step.onnx"))


def fix_batch_axis(folder: Path) -> None:
    graph = onnx.load(str(folder / "step.onnx"))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(graph, str(folder / "step.onnx"))


def edit_golden(folder: Path) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["golden"]["outputs"]["logits"][5][3] += 0.01
    (folder / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (perturb_weight, "golden trace mismatch"),
        (rename_logits, r"graph outputs \['c_out', 'h_out', 'scores'\] differ"),
        (fix_batch_axis, "batch axis must be dynamic"),
        (edit_golden, "golden trace mismatch"),
    ],
)
def test_broken_model_folder_is_refused(
    exported: Exported, tmp_path: Path, breakage: Callable[[Path], None], message: str
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(exported.folder, folder)
    breakage(folder)
    manifest = Manifest.load(folder)
    session = open_session(folder / "step.onnx")
    with pytest.raises(ContractError, match=message):
        check_graph(manifest, session)
        replay_golden(manifest, session)


def test_export_is_refused_when_parity_fails(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = export_module.export_step_graph

    def export_a_different_net(net: StepNet, manifest: Manifest, path: Path, *, exporter: str = "auto") -> str:
        other = CharLSTM(**MODEL_ARGS)  # type: ignore[arg-type]
        other.load_state_dict(net.state_dict())
        with torch.no_grad():
            other.head.bias.add_(1e-3)  # a small, uniform logit shift: only parity can see it
        return real_export(other, manifest, path, exporter=exporter)

    monkeypatch.setattr(export_module, "export_step_graph", export_a_different_net)
    out = tmp_path / "models" / "char_lm"
    with pytest.raises(ParityError, match="parity failed"):
        export_char_lm(exported.checkpoint, out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # the staging folder is gone too


def test_onnx_validation_loss_equals_the_torch_loss(corpus: CharCorpus, exported: Exported) -> None:
    onnx_loss = val_loss_from_onnx(exported.folder)
    torch_loss, chars = stream_loss(exported.net, corpus.val_ids)
    # Same cut of the text, same carried state, float32 in both runtimes: per-character
    # differences are ~1e-6 and average out, so 1e-5 nats is a tight but safe bound.
    assert abs(onnx_loss - torch_loss) <= 1e-5
    assert chars > 100_000
    assert Manifest.load(exported.folder).scores["val_loss_nats_per_char"] == pytest.approx(onnx_loss, abs=1e-12)


def test_cli_export_then_eval_prints_the_score(
    exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "char_lm"
    assert export_command(["char_lm", "--checkpoint", str(exported.checkpoint), "--out", str(out)]) == 0
    capsys.readouterr()
    assert eval_command(["--model", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"model", "val_loss_nats_per_char", "chars"}
    assert report["model"] == "char_lm"
    assert report["val_loss_nats_per_char"] == pytest.approx(val_loss_from_onnx(exported.folder), abs=1e-9)
