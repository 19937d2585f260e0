"""Which driver serves which task: the manifest's ``task`` names a registered driver class.

A model kind plugs in by registering its driver (``@register``) in its own module; the built-in
kinds are imported on first use, so a model is checked against its driver at load without the
core importing any driver. An unknown task is refused at load, naming the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from service.contract import ContractError, Manifest

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.drivers.base import Driver

D = TypeVar("D", bound="type[Driver]")

#: The kinds that ship, by task, and the module that registers each.
BUILTIN = {
    "associative_memory": "service.drivers.memory",
    "forecaster": "service.drivers.forecast",
    "captioner": "service.drivers.caption",
    "language_model": "service.drivers.language",
    "sequence_classifier": "service.drivers.classify",
    "sequence_model": "service.drivers.tensor",
    "translator": "service.drivers.translate",
}
_DRIVERS: dict[str, type[Driver]] = {}


def register(task: str) -> Callable[[D], D]:
    """Class decorator: the decorated driver serves models whose manifest names ``task``."""

    def decorate(cls: D) -> D:
        if task in _DRIVERS and _DRIVERS[task] is not cls:
            raise ValueError(f"task {task!r} already has a driver ({_DRIVERS[task].__name__})")
        cls.task = task
        _DRIVERS[task] = cls
        return cls

    return decorate


def known_tasks() -> list[str]:
    return sorted({*BUILTIN, *_DRIVERS})


def driver_class(task: str) -> type[Driver]:
    """The driver class of ``task``; ContractError (refused at load) naming the known tasks."""
    if task not in _DRIVERS and task in BUILTIN:
        importlib.import_module(BUILTIN[task])
    cls = _DRIVERS.get(task)
    if cls is None:
        raise ContractError(f"unknown task {task!r}: no driver serves it; known tasks: {known_tasks()}")
    return cls


def check_model(manifest: Manifest) -> None:
    """Refuses (ContractError) a model whose task has no driver, or whose manifest its driver cannot serve.

    The registry calls it for every folder it loads (``Registry.from_folder``'s ``check_kind``).
    """
    driver_class(manifest.task).check_manifest(manifest)
