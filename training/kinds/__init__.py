"""Model kinds on the training side: a recipe's ``kind`` picks its network, data, exporter and scorer.

The kind's name is the task its exported models declare (``manifest.task``), the same name that
picks the serving driver (``service.tasks``). ``statestream train``, ``export`` and ``eval`` look
the kind up here and know nothing else of it; adding a kind is a module that builds a
``TrainingKind`` and an entry in ``BUILTIN``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The kinds that ship, by name, and the module that defines each (imported on first use, so
#: looking a kind up never imports torch for another).
BUILTIN = {
    "associative_memory": "training.kinds.associative_memory",
    "forecaster": "training.kinds.forecaster",
    "captioner": "training.kinds.captioner",
    "language_model": "training.kinds.language_model",
    "sequence_classifier": "training.kinds.sequence_classifier",
    "translator": "training.kinds.translator",
}


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


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    loss_curve: Path | None = None
    exporter: str = "auto"


@dataclass(frozen=True)
class TrainingKind:
    """Everything the training commands need of one kind.

    ``recipe`` is the recipe's dataclass (strictly read from TOML); ``train`` runs it and
    returns a JSON-able summary; ``export`` writes a model folder (after its parity checks) and
    returns a one-line report; ``evaluate(folder, progress)`` recomputes a model folder's scores from
    its ONNX graphs (with a progress bar when ``progress``).
    """

    name: str
    recipe: type[Any]
    train: Callable[[Any, TrainOptions], dict[str, Any]]
    export: Callable[[ExportOptions], str]
    evaluate: Callable[[Path, bool], dict[str, Any]]


class UnknownKind(ValueError):
    """A recipe or model of a kind the training side does not know."""


def known_kinds() -> list[str]:
    return sorted(BUILTIN)


def kind_of(name: str) -> TrainingKind:
    """The kind called ``name``; UnknownKind naming the known ones."""
    module = BUILTIN.get(name)
    if module is None:
        raise UnknownKind(f"unknown kind {name!r}; known kinds: {known_kinds()}")
    kind = importlib.import_module(module).KIND
    assert isinstance(kind, TrainingKind) and kind.name == name
    return kind
