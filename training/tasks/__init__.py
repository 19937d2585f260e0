"""Tasks on the training side: one package per task, found by its folder.

A task is what a model does, named as its exported models declare it (``manifest.task``), the
same name that picks the serving driver (``service/tasks.py``). ``training/tasks/<task>/`` holds
its ``recipe.py`` (the recipe's dataclass as ``RECIPE``, torch-free), ``train.py``
(``train(recipe, options)``), ``export.py`` (``export(options)``) and ``evaluate.py``
(``evaluate(folder, progress)``). ``statestream train``, ``export`` and ``eval`` look a task up
here and know nothing else of it; a new task is a new package, and looking one up imports only
the part asked for (reading a recipe imports no torch). A task whose models are imported
(``statestream import``), not trained, says ``IMPORTED = True`` in its package and holds only
``evaluate.py``: ``eval`` scores its models, and no recipe names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    from _typeshed import DataclassInstance

L = TypeVar("L", bound="DataclassInstance")


@dataclass(frozen=True)
class TrainOptions:
    """What the ``train`` command lets a person change about a recipe's run."""

    recipe_file: Path
    steps: int | None = None
    out: str | None = None
    device: str = "auto"
    resume: bool = False
    max_minutes: float | None = None
    progress: bool = True

    def applied_to(self, loop: L) -> L:
        """``loop`` (a recipe's ``[train]`` table with ``steps`` and ``out``) with ``--steps`` and ``--out``."""
        changes = {name: value for name, value in (("steps", self.steps), ("out", self.out)) if value is not None}
        return replace(loop, **changes)


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    loss_curve: Path | None = None
    exporter: str = "auto"


class UnknownTask(ValueError):
    """A recipe or model of a task the training side does not know."""


@dataclass(frozen=True)
class TrainingTask:
    """Everything the training commands need of one task, each part imported when it is used.

    ``recipe`` is the recipe's dataclass (strictly read from TOML); ``train`` runs it and returns
    a JSON-able summary; ``export`` writes a model folder (after its parity checks) and returns a
    one-line report; ``evaluate`` recomputes a model folder's scores from its ONNX graphs (with a
    progress bar when ``progress``).
    """

    name: str

    @property
    def imported(self) -> bool:
        """Whether the task's models are imported, not trained here (its package says ``IMPORTED = True``)."""
        return bool(getattr(importlib.import_module(f"{__name__}.{self.name}"), "IMPORTED", False))

    def part(self, module: str) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.name}.{module}")

    @property
    def recipe(self) -> type[Any]:
        recipe: type[Any] = self.part("recipe").RECIPE
        return recipe

    def train(self, recipe: Any, options: TrainOptions) -> dict[str, Any]:
        summary: dict[str, Any] = self.part("train").train(recipe, options)
        return summary

    def export(self, options: ExportOptions) -> str:
        return str(self.part("export").export(options))

    def evaluate(self, folder: Path, progress: bool = False) -> dict[str, Any]:
        scores: dict[str, Any] = self.part("evaluate").evaluate(folder, progress)
        return scores


def known_tasks(*, include_imported: bool = False) -> list[str]:
    """The tasks trained here: packages under ``training/tasks/`` with a recipe, train, export and
    evaluate; with ``include_imported`` also those of imported models (evaluate only)."""
    every = sorted(module.name for module in pkgutil.iter_modules(__path__) if module.ispkg)
    return every if include_imported else [name for name in every if not TrainingTask(name).imported]


def task_of(name: str, *, include_imported: bool = False) -> TrainingTask:
    """The task called ``name`` (a task of imported models only with ``include_imported``); UnknownTask otherwise."""
    if name not in known_tasks(include_imported=True):
        raise UnknownTask(f"unknown task {name!r}; known tasks: {known_tasks(include_imported=include_imported)}")
    task = TrainingTask(name)
    if task.imported and not include_imported:
        raise UnknownTask(
            f"task {name!r} is of imported models (statestream import): nothing trains it, so no recipe or "
            f"checkpoint names it; known tasks: {known_tasks()}"
        )
    return task
