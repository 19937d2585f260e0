"""The container's locks (deploy/locks/) still install what pyproject.toml asks for.

``docker build`` installs the locks and nothing else, so a dependency added to pyproject.toml,
a range moved past a pin, or a dependency dropped, must fail here and not in production. The
locks are written by ``make locks`` (uv, against the package index); this check needs no network:
it reads both files. What it cannot tell offline is whether a newer release exists; that is what
``make locks UPGRADE=--upgrade`` is for.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCKS = ROOT / "deploy" / "locks"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = "statestream (pyproject.toml)"  # how a lock annotates a dependency pyproject.toml names
FIX = "run `make locks` (docs/operations.md#lock-files)"


@dataclass(frozen=True)
class Lock:
    """One lock file: the requirements it was made from and the Python it was made for."""

    file: str
    requirements: tuple[str, ...]
    python: str

    def wanted(self) -> dict[str, Requirement]:
        """pyproject.toml's requirements that apply on the lock's Python, by canonical name."""
        environment = {"python_version": self.python, "python_full_version": f"{self.python}.0",
                       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}  # fmt: skip
        found = [Requirement(text) for text in self.requirements]
        return {canonicalize_name(r.name): r for r in found if r.marker is None or r.marker.evaluate(environment)}


SERVING = tuple(PYPROJECT["project"]["dependencies"])
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
LOCKS_MADE = [
    Lock("serve-cpu.txt", (*SERVING, *EXTRAS["cpu"]), "3.11"),  # python:3.11-slim
    Lock("serve-gpu.txt", (*SERVING, *EXTRAS["gpu"]), "3.12"),  # the CUDA image's Ubuntu 24.04
    Lock("build.txt", tuple(PYPROJECT["build-system"]["requires"]), "3.11"),
]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: int
    via_project: bool


def pins(lock: Lock) -> dict[str, Pin]:
    """Each ``name==version`` of the file with how many hashes it carries and whether pyproject.toml asks for it."""
    entries = re.split(r"\n(?=\S)", (LOCKS / lock.file).read_text())
    found: dict[str, Pin] = {}
    for entry in entries:
        match = PIN.match(entry)
        if match:
            name = canonicalize_name(match.group(1))
            found[name] = Pin(Version(match.group(2)), entry.count("--hash=sha256:"), PROJECT in entry)
    return found


@pytest.mark.parametrize("lock", LOCKS_MADE, ids=lambda lock: lock.file)
def test_every_requirement_of_pyproject_is_pinned_within_its_range(lock: Lock) -> None:
    pinned = pins(lock)
    for name, requirement in lock.wanted().items():
        assert name in pinned, f"{lock.file} has no pin for {requirement} (pyproject.toml asks for it); {FIX}"
        version = pinned[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.file} pins {name}=={version}, outside pyproject.toml's {requirement}; {FIX}"
        )


@pytest.mark.parametrize("lock", LOCKS_MADE[:2], ids=lambda lock: lock.file)
def test_a_lock_holds_no_direct_dependency_pyproject_no_longer_names(lock: Lock) -> None:
    direct = {name for name, pin in pins(lock).items() if pin.via_project}
    assert direct == set(lock.wanted()), f"{lock.file} was made from other requirements than pyproject.toml's; {FIX}"


@pytest.mark.parametrize("lock", LOCKS_MADE, ids=lambda lock: lock.file)
def test_every_pin_carries_the_hashes_pip_checks_and_names_the_command_that_made_it(lock: Lock) -> None:
    text = (LOCKS / lock.file).read_text()
    assert "#    make locks\n" in text.split("\n\n")[0], f"{lock.file} was not written by `make locks`"
    unhashed = [name for name, pin in pins(lock).items() if pin.hashes == 0]
    assert pins(lock) and unhashed == [], f"{lock.file}: pins without a hash: {unhashed}; {FIX}"


def test_each_image_gets_exactly_one_onnx_runtime_and_no_torch() -> None:
    cpu, gpu = pins(LOCKS_MADE[0]), pins(LOCKS_MADE[1])
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu  # they install one package and overwrite each other
    assert "torch" not in cpu and "torch" not in gpu
