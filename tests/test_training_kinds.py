"""The training commands pick a recipe's kind (network, data, exporter, scorer) and know nothing else of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import command
from tests.accumulator_model import build
from training.cli import eval_command
from training.kinds import UnknownKind, kind_of, known_kinds
from training.recipes import RecipeError, load_recipe, recipe_path


def test_the_shipped_recipe_declares_its_kind_and_the_kind_reads_it() -> None:
    recipe = load_recipe(recipe_path("char_lm"))
    assert recipe.kind == "language_model"
    assert isinstance(recipe, kind_of("language_model").recipe)


def test_a_recipe_of_an_unknown_kind_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    text = recipe_path("char_lm").read_text().replace('kind = "language_model"', 'kind = "oracle"')
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(
        RecipeError,
        match=r"unknown kind 'oracle'; known kinds: \['associative_memory', 'captioner', 'forecaster', 'language_model', 'sequence_classifier', 'translator'\]",
    ):
        load_recipe(tmp_path / "r.toml")


def test_a_recipe_without_a_kind_is_refused(tmp_path: Path) -> None:
    lines = [line for line in recipe_path("char_lm").read_text().splitlines() if not line.startswith("kind")]
    (tmp_path / "r.toml").write_text("\n".join(lines))
    with pytest.raises(RecipeError, match="missing key 'kind'"):
        load_recipe(tmp_path / "r.toml")


def test_unknown_kind_lookup_names_the_known_ones() -> None:
    with pytest.raises(UnknownKind, match="known kinds"):
        kind_of("telepathy")
    assert "language_model" in known_kinds()


def test_eval_of_a_model_whose_kind_has_no_scorer_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build(tmp_path / "accumulator")  # a test-only task: the training side has no kind for it
    assert command.run(lambda: eval_command(["--model", str(folder)])) == command.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("statestream: error: unknown kind 'accumulator'") and "\n" not in err
