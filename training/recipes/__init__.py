"""Recipes: one TOML file per shipped model, read into small frozen dataclasses.

A recipe is the whole answer to "how was this model made": its ``task`` (which picks the
network, the data, the exporter and the scorer: ``training.tasks``), the network's size, the
loop's settings and where the run writes. Reading one imports no torch. Loading is strict: an unknown key (a typo such as
``hiden``) is an error that names it, never a silently ignored setting, and every value must
have its field's type.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from training.tasks import UnknownTask, task_of

RECIPES_DIR = Path(__file__).resolve().parent
REPO_ROOT = RECIPES_DIR.parents[1]
T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe file that cannot be read into its dataclass; the message names the key."""


def recipe_path(model_name: str) -> Path:
    """The shipped recipe of a model: ``training/recipes/<name>.toml``."""
    return RECIPES_DIR / f"{model_name}.toml"


def describe_recipe_path(path: Path) -> str:
    """The path to record in a manifest: repository-relative when the recipe is in the repository.

    A run on another machine then records ``training/recipes/char_lm.toml``, not that
    machine's checkout folder.
    """
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return resolved.relative_to(REPO_ROOT).as_posix()
    parts = resolved.parts
    if len(parts) >= 3 and parts[-3:-1] == ("training", "recipes"):  # a checkout elsewhere
        return "/".join(parts[-3:])
    return str(path)


def recorded_recipe_file(metadata: Mapping[str, Any]) -> str:
    """The recipe a weights file's metadata names, as a manifest records it ('' when it names none)."""
    recorded = str(metadata.get("recipe_file", ""))
    return describe_recipe_path(Path(recorded)) if recorded else ""


def recorded_recipe(table: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe as a weights file records it, with its keys as a recipe names them today.

    Weights written before the recipe's ``kind`` was named ``task`` say ``kind``, meaning the
    same; a recipe file is edited instead (:func:`load_recipe` refuses ``kind``), a weights file
    cannot be.
    """
    recipe = dict(table)
    if "kind" in recipe:
        recipe["task"] = recipe.pop("kind")
    return recipe


def load_recipe(path: Path) -> Any:
    """Read a recipe file into its task's dataclass; an unknown task, unknown or missing keys and
    wrongly typed values are RecipeErrors."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder; give a recipe's .toml file or the name of a shipped one") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (not UTF-8), so not a recipe") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from None
    if "kind" in data:
        raise RecipeError(f"{path}: the key 'kind' is now named 'task': rename it (task = {json.dumps(data['kind'])})")
    if not isinstance(data.get("task"), str):
        raise RecipeError(f"{path}: missing key 'task' (what the model does, e.g. task = \"language_model\")")
    try:
        task = task_of(data["task"])
    except UnknownTask as exc:
        raise RecipeError(f"{path}: {exc}") from None
    return from_table(task.recipe, data, where=str(path))


def from_table(cls: type[T], table: Mapping[str, Any], *, where: str) -> T:
    """Build the frozen dataclass ``cls`` from a TOML table, checking keys and types.

    Nested dataclass fields are read from sub-tables; ``int`` fields take integers only,
    ``float`` fields integers or floats (TOML writes ``1`` for ``1.0`` often enough).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown key {', '.join(repr(k) for k in unknown)} (known keys: {sorted(known)})")
    missing = sorted(
        name
        for name, f in known.items()
        if name not in table and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise RecipeError(f"{where}: missing key {', '.join(repr(k) for k in missing)}")
    values: dict[str, Any] = {}
    for name, value in table.items():
        values[name] = _typed(hints[name], value, where=f"{where}: {name}")
    try:
        return cls(**values)
    except ValueError as exc:  # the dataclass's own range checks
        raise RecipeError(f"{where}: {exc}") from None


def _typed(hint: Any, value: Any, *, where: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a table")
        return from_table(hint, value, where=where)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}")
        return value
    raise TypeError(f"{where}: recipes do not support fields of type {hint!r}")  # a programming error


__all__ = [
    "RecipeError",
    "describe_recipe_path",
    "from_table",
    "load_recipe",
    "recipe_path",
    "recorded_recipe",
    "recorded_recipe_file",
]
