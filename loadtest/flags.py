"""Argparse types for the load commands' flags that hold numbers inside text: a list of counts,
a Locust run time, a ``NAME=MS`` objective. Each checks its numbers against an ``InRange`` (its
``range``), so a value out of range is the same one-line usage error as a plain numeric flag's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.command import InRange, OutOfRange


@dataclass(frozen=True)
class CountList:
    """``1,64,256``: comma-separated whole numbers, each in ``range``."""

    range: InRange[int]

    def __call__(self, text: str) -> tuple[int, ...]:
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
