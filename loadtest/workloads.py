"""The Locust users' registry: each user declares the model it drives and the p99 objective of
every request it reports, so a new kind's load is one decorated class in ``loadtest/locustfile.py``.

Importing the locustfile imports Locust, which monkey-patches the whole process for gevent. The
SLO runner and the tests therefore never import it: they read the declarations from a child
process (``python -m loadtest.locustfile`` prints them, one JSON object a line).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
UserClass = TypeVar("UserClass", bound=type)


@dataclass(frozen=True)
class Workload:
    """One Locust user class as it declared itself."""

    user: str  # the class's name
    model: str  # the model it drives (a folder of the models directory)
    weight: int  # Locust's share of the users it gets
    slo_ms: Mapping[str, float]  # p99 objective in ms of each request name it reports

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "slo_ms": dict(self.slo_ms)})

    @classmethod
    def from_json(cls, line: str) -> Workload:
        data = json.loads(line)
        return cls(data["user"], data["model"], int(data["weight"]), dict(data["slo_ms"]))


_REGISTERED: dict[str, Workload] = {}


def workload(model: str, slo_ms: Mapping[str, float]) -> Callable[[UserClass], UserClass]:
    """Class decorator: the Locust user drives ``model`` (set as its ``model``) and reports the
    requests named in ``slo_ms``. A request name belongs to one user, so each row of the SLO
    table has one objective."""

    def declare(cls: UserClass) -> UserClass:
        taken = {
            name: other.user for other in _REGISTERED.values() for name in other.slo_ms if other.user != cls.__name__
        }
        clashes = sorted(set(slo_ms) & set(taken))
        if clashes:
            raise ValueError(f"{cls.__name__} reports {clashes}, already reported by {taken[clashes[0]]}")
        if not slo_ms or not all(limit > 0 for limit in slo_ms.values()):
            raise ValueError(f"{cls.__name__} must declare a positive p99 objective for each request it reports")
        _REGISTERED[cls.__name__] = Workload(cls.__name__, model, int(getattr(cls, "weight", 1)), dict(slo_ms))
        cls.model = model  # type: ignore[attr-defined]  # the user opens its sessions on it
        return cls

    return declare


def registered() -> list[Workload]:
    """The users declared in this process (the locustfile's, once it is imported)."""
    return list(_REGISTERED.values())


def print_registered() -> None:
    for declared_user in registered():
        print(declared_user.to_json())


def declared() -> list[Workload]:
    """The locustfile's users, read in a child process (see the module docstring)."""
    child = subprocess.run(
        [sys.executable, "-m", "loadtest.locustfile"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"could not read the Locust users from loadtest/locustfile.py: {last}")
    return [Workload.from_json(line) for line in child.stdout.splitlines() if line.strip()]
