"""The registry loads proven models only: a model whose graph or golden trace is wrong is refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnx
import pytest

from service.contract import ContractError, Manifest, check_model_name
from service.errors import NotFound
from service.registry import LoadedModel, Registry
from service.settings import Settings
from service.tasks import driver_class


def copy_model(models: Path, name: str) -> Path:
    target = models / name
    shutil.copytree(models / "char_lm", target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def edit_manifest(folder: Path, edit: dict[str, object]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(edit)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_good_model_loads_and_replays_its_golden_trace(models_dir: Path) -> None:
    model = LoadedModel.from_folder(models_dir / "char_lm", Settings(), driver_class)
    assert model.manifest.name == "char_lm"
    assert model.golden_error <= model.manifest.golden.tolerance
    assert model.provider == "CPUExecutionProvider"


def test_a_model_with_a_wrong_golden_trace_is_refused_and_the_others_load(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = copy_model(models_dir, "broken_golden")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["golden"]["outputs"]["logits"][3][0] += 0.5
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.ERROR):
        registry = Registry.from_folder(models_dir, Settings(), driver_class)
    assert [m.manifest.name for m in registry] == ["char_lm"]
    refused = [r.getMessage() for r in caplog.records if "broken_golden" in r.getMessage()]
    assert refused and "golden trace mismatch" in refused[0]
    with pytest.raises(NotFound):
        registry.get("broken_golden")


def test_a_graph_with_perturbed_weights_fails_its_golden_replay(models_dir: Path) -> None:
    broken = copy_model(models_dir, "perturbed")
    graph = onnx.load(str(broken / "step.onnx"))
    head_bias = max(graph.graph.initializer, key=lambda t: t.dims[0] if len(t.dims) == 1 else 0)
    array = onnx.numpy_helper.to_array(head_bias).copy()
    array += 0.01
    head_bias.CopyFrom(onnx.numpy_helper.from_array(array, head_bias.name))
    onnx.save(graph, str(broken / "step.onnx"))
    with pytest.raises(ContractError, match="golden trace mismatch"):
        LoadedModel.from_folder(broken, Settings(), driver_class)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"state": [{"input": "h", "output": "h_out", "dtype": "float32", "shape": [2, 32]}]},
            "differ from the manifest",
        ),
        ({"outputs": [{"name": "logits", "dtype": "float32", "shape": [64]}]}, "has shape"),
        ({"inputs": [{"name": "char_id", "dtype": "float32", "shape": []}]}, "has type tensor\\(int64\\)"),
        ({"surprise": 1}, "unknown key"),
        ({"step_graph": "../elsewhere.onnx"}, "must be a file name"),
        ({"step_graph": "weights.pkl"}, "only .onnx graphs"),
    ],
)
def test_a_manifest_that_does_not_match_its_graph_is_refused(
    models_dir: Path, edit: dict[str, object], message: str
) -> None:
    broken = copy_model(models_dir, "mismatch")
    edit_manifest(broken, edit)
    with pytest.raises(ContractError, match=message):
        LoadedModel.from_folder(broken, Settings(), driver_class)


def test_a_folder_without_a_manifest_or_with_bad_json_is_refused(models_dir: Path) -> None:
    (models_dir / "empty").mkdir()
    with pytest.raises(ContractError, match="no manifest"):
        Manifest.load(models_dir / "empty")
    (models_dir / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(ContractError, match="not valid JSON"):
        Manifest.load(models_dir / "empty")


def test_a_manifest_that_is_not_utf8_or_is_a_folder_is_one_line_of_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both were tracebacks (UnicodeDecodeError, IsADirectoryError) in check, eval and the loader."""
    from service import command
    from service.check_command import main

    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "manifest.json").write_bytes(b"\xff\xfe{}")
    (tmp_path / "folder" / "manifest.json").mkdir(parents=True)
    for name, says in [("binary", "not valid JSON (not UTF-8 text)"), ("folder", "cannot be read (Is a directory)")]:
        folder = tmp_path / name
        assert command.run(lambda folder=folder: main([str(folder)])) == command.EXIT_USAGE
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(
            f"statestream: error: {folder}: check 'manifest' failed: {folder}/manifest.json: {says}; "
        )


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "UPPER", "x" * 65, "..", "-lead"])
def test_model_names_cannot_escape_the_models_folder(name: str) -> None:
    with pytest.raises(ContractError, match="invalid model name"):
        check_model_name(name)


def test_versions_are_chosen_newest_first_unless_named(models_dir: Path) -> None:
    second = copy_model(models_dir, "char_lm_v2")
    edit_manifest(second, {"name": "char_lm", "version": "2"})
    registry = Registry.from_folder(models_dir, Settings(), driver_class)
    assert registry.get("char_lm").manifest.version == "2"
    assert registry.get("char_lm", "1").manifest.version == "1"
    with pytest.raises(NotFound, match="version '3'"):
        registry.get("char_lm", "3")
