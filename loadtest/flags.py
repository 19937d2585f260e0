"""What the load commands' flags share: argparse types for flags that hold numbers inside text (a
list of counts or rates, a Locust run time, a ``NAME=MS`` objective), and the check of the model
that ``--models-dir`` and ``--model`` name. Each type checks its numbers against an ``InRange``
(its ``range``), so a value out of range is the same one-line usage error as a plain numeric
flag's; a model that is not there, or not of a kind the command runs, is one usage line too.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Generic

from service.command import InRange, N, OutOfRange
from service.contract import MANIFEST_FILE, ContractError, Manifest


@dataclass(frozen=True)
class CountList(Generic[N]):
    """``1,64,256`` (or ``0,2400.5``): comma-separated numbers, each in ``range`` (whole ones if it is ``int_in``)."""

    range: InRange[N]

    def __call__(self, text: str) -> tuple[N, ...]:
        return tuple(self.range(part) for part in text.split(","))


#: Locust's run-time spellings: ``90``, ``90s``, ``2m``, ``1h30m``.
_RUN_TIME = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


@dataclass(frozen=True)
class RunTime:
    """A Locust run time (``30s``, ``2m``, ``1h30m``, or seconds) as whole seconds in ``range``."""

    range: InRange[int]

    def __call__(self, text: str) -> int:
        match = _RUN_TIME.fullmatch(text.strip())
        if not text.strip() or match is None:
            raise OutOfRange(f"{text!r} is not a run time (e.g. 30s, 2m, 1h30m)")
        hours, minutes, seconds = (int(part or 0) for part in match.groups())
        try:
            return self.range(str(3600 * hours + 60 * minutes + seconds))
        except OutOfRange:
            raise OutOfRange(f"{text.strip()} is out of range ({self.range.describe()} seconds)") from None


@dataclass(frozen=True)
class Objective:
    """``NAME=MS``: a request name and its p99 objective in milliseconds, in ``range``."""

    range: InRange[float]

    def __call__(self, text: str) -> tuple[str, float]:
        name, _, value = text.partition("=")
        if not name or not value:
            raise OutOfRange(f"takes NAME=MS, got {text!r}")
        try:
            return name, self.range(value)
        except OutOfRange as exc:
            raise OutOfRange(f"the p99 objective of {name!r} in ms: {exc}") from None


@dataclass(frozen=True)
class NameList:
    """``a,b``: comma-separated names, each one of ``choices``, none twice; a tuple in the order given."""

    choices: tuple[str, ...]

    def __call__(self, text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(","))
        for name in names:
            if name not in self.choices:
                raise OutOfRange(f"{name!r} is not one of {', '.join(self.choices)}")
            if names.count(name) > 1:
                raise OutOfRange(f"{name} is given twice")
        return names


def model_folder(parser: argparse.ArgumentParser, models_dir: Path, model: str, *, tasks: Collection[str] = ()) -> Path:
    """``models_dir/model``, a model folder (of one of ``tasks``, where given); else a usage error
    naming ``--models-dir`` and ``--model``, before anything starts."""
    if not models_dir.is_dir():
        parser.error(f"--models-dir {models_dir}: no such folder")
    if not (models_dir / model / MANIFEST_FILE).is_file():
        parser.error(f"no model folder {model!r} in {models_dir} (--models-dir, --model)")
    return model_at(parser, models_dir / model, f"--model {model}", tasks=tasks)


def model_at(parser: argparse.ArgumentParser, folder: Path, given: str, *, tasks: Collection[str] = ()) -> Path:
    """``folder``, a model folder whose manifest reads (of one of ``tasks``, where given); else a usage
    error that starts with ``given``, the flag and value that named it (``--model lstm256``)."""
    try:
        task = Manifest.load(folder).task
    except ContractError as exc:
        parser.error(f"{given}: not a model folder ({exc})")
    if tasks and task not in tasks:
        parser.error(f"{given}: its task is {task!r}; this command runs {' or '.join(map(repr, sorted(tasks)))}")
    return folder
