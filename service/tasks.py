"""Which driver serves which task: the manifest's ``task`` names a registered driver class.

A model kind plugs in by registering its driver (``@register``) in a module of its own under
``service/drivers/``: the first lookup imports every module of that package, so a new kind is
one new file and no list to edit, and nothing in the core imports a driver by name. An unknown
task is refused at load, naming the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from service.contract import ContractError
from service.package_modules import import_every_module

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.drivers.base import Driver

D = TypeVar("D", bound="type[Driver]")

#: The package whose modules hold the drivers that ship.
DRIVERS_PACKAGE = "service.drivers"
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


def drivers() -> dict[str, type[Driver]]:
    """Every registered driver by task: the shipped ones (imported here, once) and any a caller registered."""
    import_every_module(DRIVERS_PACKAGE)
    return dict(_DRIVERS)


def known_tasks() -> list[str]:
    return sorted(drivers())


def shipped_tasks() -> list[str]:
    """The tasks whose driver ships in ``service/drivers/`` (not one a test or a plug-in registered)."""
    return sorted(task for task, cls in drivers().items() if cls.__module__.startswith(DRIVERS_PACKAGE + "."))


def driver_class(task: str) -> type[Driver]:
    """The driver class of ``task``; ContractError (refused at load) naming the known tasks."""
    cls = _DRIVERS.get(task) or drivers().get(task)
    if cls is None:
        raise ContractError(f"unknown task {task!r}: no driver serves it; known tasks: {known_tasks()}")
    return cls
