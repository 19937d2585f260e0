"""The training commands pick a recipe's task (network, data, exporter, scorer) and know nothing else of it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from service import command
from tests.accumulator_model import build
from training.cli import eval_command, export_command, train_command
from training.recipes import RecipeError, load_recipe, recipe_path, recorded_recipe
from training.tasks import UnknownTask, known_tasks, task_of


def test_the_shipped_recipe_declares_its_task_and_the_task_reads_it() -> None:
    recipe = load_recipe(recipe_path("char_lm"))
    assert recipe.task == "language_model"
    assert isinstance(recipe, task_of("language_model").recipe)


def test_a_recipe_of_an_unknown_task_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    text = recipe_path("char_lm").read_text().replace('task = "language_model"', 'task = "oracle"')
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(
        RecipeError,
        match=r"unknown task 'oracle'; known tasks: \['associative_memory', 'captioner', 'forecaster', 'language_model', 'sequence_classifier', 'translator'\]",
    ):
        load_recipe(tmp_path / "r.toml")


def test_a_recipe_without_a_task_is_refused(tmp_path: Path) -> None:
    lines = [line for line in recipe_path("char_lm").read_text().splitlines() if not line.startswith("task")]
    (tmp_path / "r.toml").write_text("\n".join(lines))
    with pytest.raises(RecipeError, match="missing key 'task'"):
        load_recipe(tmp_path / "r.toml")


def test_a_recipe_still_saying_kind_is_refused_in_one_line_naming_the_new_key(tmp_path: Path) -> None:
    text = recipe_path("char_lm").read_text().replace('task = "language_model"', 'kind = "language_model"')
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(RecipeError) as refused:
        load_recipe(tmp_path / "r.toml")
    message = str(refused.value)
    assert "the key 'kind' is now named 'task'" in message and 'task = "language_model"' in message
    assert "\n" not in message


def test_a_weights_file_written_when_the_task_was_called_kind_reads_as_a_recipe_of_today() -> None:
    assert recorded_recipe({"name": "m", "kind": "forecaster"}) == {"name": "m", "task": "forecaster"}
    assert recorded_recipe({"name": "m", "task": "forecaster"}) == {"name": "m", "task": "forecaster"}


def test_unknown_task_lookup_names_the_known_ones() -> None:
    with pytest.raises(UnknownTask, match="known tasks"):
        task_of("telepathy")
    assert "language_model" in known_tasks()


def test_eval_of_a_model_whose_task_has_no_scorer_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build(tmp_path / "accumulator")  # a test-only task: the training side has no package for it
    assert command.run(lambda: eval_command(["--model", str(folder)])) == command.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("statestream: error: unknown task 'accumulator'") and "\n" not in err


def one_error_line(run: Callable[[], int], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and the one stderr line of a training command run as the CLI runs it."""
    code = command.run(run)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("statestream: error: "), lines
    return code, lines[0]


def test_a_recipe_that_is_a_folder_not_utf8_or_empty_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each was a traceback: IsADirectoryError, UnicodeDecodeError, and '' read as the folder '.'."""
    binary = tmp_path / "r.toml"
    binary.write_bytes(b"\xff\xfe task")
    for argv, says in [
        (["char_lm", "--recipe", str(tmp_path)], f"{tmp_path}: is a folder; give a recipe's .toml file"),
        ([str(tmp_path)], f"{tmp_path}: is a folder; give a recipe's .toml file"),
        (["char_lm", "--recipe", str(binary)], f"{binary}: not a text file (not UTF-8), so not a recipe"),
        ([""], "the recipe is empty: give a recipe's name or its .toml file"),
    ]:
        code, line = one_error_line(lambda argv=argv: train_command(argv), capsys)
        assert code == command.EXIT_USAGE and line.startswith(f"statestream: error: {says}"), argv


def test_export_of_a_file_that_is_not_a_checkpoint_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.load's EOFError, KeyError or a dict of another format were tracebacks."""
    import torch

    empty, text, other = tmp_path / "empty.pt", tmp_path / "text.pt", tmp_path / "other.pt"
    empty.touch()
    text.write_text("hello\n")
    torch.save({"a": 1}, other)
    for checkpoint in (empty, text, other):
        argv = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "model")]
        code, line = one_error_line(lambda argv=argv: export_command(argv), capsys)
        assert code == command.EXIT_USAGE
        assert line == (
            f"statestream: error: --checkpoint {checkpoint}: not a statestream weights file or checkpoint; "
            "give the weights.pt, best.pt or checkpoint.pt of a run"
        )
    assert not (tmp_path / "model").exists()


def test_train_refuses_an_out_that_is_a_file_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a FileExistsError traceback."""
    file = tmp_path / "runs"
    file.write_text("")
    for out, says in [(file, f"--out {file} is a file"), (file / "x", f"--out {file / 'x'}: {file} is a file")]:
        argv = ["char_lm", "--out", str(out), "--steps", "1", "--quiet"]
        code, line = one_error_line(partial(train_command, argv), capsys)
        assert code == command.EXIT_USAGE and line == f"statestream: error: {says}, not a folder"


def test_export_refuses_an_out_or_a_loss_curve_it_cannot_use_before_exporting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --out that is a file, or a folder of other things, was refused by a traceback after the whole
    export (or, under a file, before it); a --loss-curve that is not there was left out without a word."""
    checkpoint, file, other = tmp_path / "weights.pt", tmp_path / "file", tmp_path / "other"
    checkpoint.write_text("not read: the flags are refused first")
    file.write_text("")
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for flags, says in [
        (["--out", str(file)], f"--out {file} is a file, not a folder"),
        (["--out", str(other)], f"--out {other} exists and is not a model folder; refusing to write into it"),
        (
            ["--out", str(tmp_path / "m"), "--loss-curve", str(tmp_path / "no.png")],
            f"--loss-curve {tmp_path / 'no.png'}: no such file",
        ),
        (["--out", str(tmp_path / "m"), "--loss-curve", str(other)], f"--loss-curve {other}: is a folder"),
    ]:
        argv = ["--checkpoint", str(checkpoint), *flags]
        code, line = one_error_line(partial(export_command, argv), capsys)
        assert code == command.EXIT_USAGE and line == f"statestream: error: {says}", argv
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"] and not (tmp_path / "m").exists()
