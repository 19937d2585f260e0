"""Which ``statestream client`` commands there are: each command's module registers itself.

A command is a module of this package whose run function carries ``@command(name, description,
add_arguments, tasks=...)``; every module here is imported on first use (as service/tasks.py
does for drivers), so a new command is one new file. ``tasks`` are the model tasks a command
serves: :func:`served_model` refuses a model of another task in one line naming the commands
that do serve it, and the tests check that every task a driver serves has a command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from service.api import statestream_pb2 as pb
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError
from service.package_modules import import_every_module

#: Runs a command against a connected client; returns its exit code.
Run = Callable[[Client, argparse.Namespace], int]

#: The package whose modules are the shipped commands (and the machinery they share).
PACKAGE = "service.client"


@dataclass(frozen=True)
class ClientCommand:
    """One ``statestream client NAME``: its help line, its own options, what it runs, the tasks it serves."""

    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Run
    tasks: tuple[str, ...] = ()


_COMMANDS: dict[str, ClientCommand] = {}


def command(
    name: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    *,
    tasks: tuple[str, ...] = (),
) -> Callable[[Run], Run]:
    """Decorator: the decorated function runs ``statestream client NAME``."""

    def decorate(run: Run) -> Run:
        known = _COMMANDS.get(name)
        if known is not None and known.run is not run:
            raise ValueError(f"client command {name!r} is already registered (by {known.run.__module__})")
        _COMMANDS[name] = ClientCommand(name, description, add_arguments, run, tasks)
        return run

    return decorate


def commands() -> list[ClientCommand]:
    """Every registered command by name: the shipped ones (every module of PACKAGE, imported once) and any other."""
    import_every_module(PACKAGE)
    return sorted(_COMMANDS.values(), key=lambda c: c.name)


def commands_serving(task: str) -> list[str]:
    """The names of the commands that serve models of ``task``."""
    return [c.name for c in commands() if task in c.tasks]


def served_model(client: Client, args: argparse.Namespace) -> pb.ModelInfo:
    """``args.model``'s description, refused (exit 2) unless the running command serves its task."""
    info = client.get_model(args.model)
    tasks = next(c.tasks for c in commands() if c.name == args.command)
    if info.task not in tasks:
        others = " or ".join(f"'statestream client {name}'" for name in commands_serving(info.task))
        raise CommandError(
            f"{args.model!r} is a {info.task} model; 'client {args.command}' takes {' or '.join(tasks)} models",
            EXIT_USAGE,
            hint=f"try {others}" if others else "",
        )
    return info
