"""The serving install runs the client commands: a wheel of ``service/`` alone, in a fresh venv.

The wheel is built as the Dockerfile builds it (pyproject.toml, README.md and service/ only, so
it holds no training/ or loadtest/) and pip installs it into a new virtual environment. Its
dependencies are the serving ones (``dependencies`` and the ``cpu`` extra, and what they
require), linked from this environment instead of downloaded: nothing else is importable there,
so torch, scikit-learn and matplotlib are missing, as after ``make serve``. The commands run
against the shipped models, served from the checkout, and must print what they print here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from service.datasets.digits import load_digits
from tests.conftest import ROOT, ShippedServer
from tests.servers import STATESTREAM

PIP = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
ABSENT_ON_SERVING = ("torch", "training", "loadtest", "sklearn", "matplotlib")
CLIENT_COMMANDS = {
    "complete a digit": ["complete", "--model", "rbm_digits", "--pattern", "3", "--occlude", "bottom", "--json"],
    "complete a letter": ["complete", "--model", "hopfield_letters", "--pattern", "E", "--noise", "0.25", "--json"],
    "forecast the laser": ["forecast", "--model", "laser", "--json"],
    "forecast mackey-glass": ["forecast", "--model", "mackey_glass", "--json"],
    "identify a speaker": ["identify", "--model", "speakers", "--index", "7", "--json"],
}


def serving_distributions() -> list[importlib.metadata.Distribution]:
    """The installed distributions that ``pip install '.[cpu]'`` needs, found through their requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["cpu"]]]
    found: dict[str, importlib.metadata.Distribution] = {}
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        distribution = importlib.metadata.distribution(requirement.name)
        name = distribution.metadata["Name"].lower()
        if name not in found:
            found[name] = distribution
            pending.extend(Requirement(text) for text in distribution.requires or [])
    return list(found.values())


def link_distribution(distribution: importlib.metadata.Distribution, site_packages: Path) -> None:
    """Makes ``distribution`` importable in ``site_packages`` by linking its top-level entries.

    A namespace directory (``google``, shared by several distributions) is made real and only
    this distribution's part of it is linked.
    """
    assert distribution.files is not None, f"{distribution.metadata['Name']} has no RECORD"
    tops = {file.parts[:2] for file in distribution.files if file.parts[0] not in ("..", "__pycache__")}
    for parts in tops:
        top = Path(str(distribution.locate_file(parts[0])))
        is_namespace = top.is_dir() and not (top / "__init__.py").exists() and "." not in top.name
        entry = parts if is_namespace and len(parts) == 2 else parts[:1]
        if entry[-1] == "__pycache__":
            continue
        link = site_packages.joinpath(*entry)
        if is_namespace:
            link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(Path(str(distribution.locate_file(Path(*entry)))))


def run_in(python: Path, code: str) -> str:
    """What ``code`` prints, run by ``python`` from its venv's folder (not the checkout, which ``-c`` would import)."""
    venv = python.parent.parent
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, cwd=venv
    ).stdout.strip()


def build_serving_wheel(root: Path) -> Path:
    """The wheel the Dockerfile builds: pyproject.toml, README.md and service/, nothing else."""
    source, wheels = root / "source", root / "wheels"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "service", source / "service", ignore=shutil.ignore_patterns("__pycache__"))
    build = ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(wheels), str(source)]
    subprocess.run([*PIP, *build], check=True)
    (wheel,) = wheels.glob("statestream-*.whl")
    return wheel


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the serving wheel and its dependencies only; its ``bin`` folder."""
    root = tmp_path_factory.mktemp("serving_install")
    wheel, venv = build_serving_wheel(root), root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*PIP, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True)
    site_packages = Path(run_in(python, "import sysconfig; print(sysconfig.get_path('purelib'))"))
    for distribution in serving_distributions():
        link_distribution(distribution, site_packages)
    return venv / "bin"


def run_command(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` as a user runs it, from ``cwd``, with no ``PYTHONPATH`` to leak the checkout through."""
    clean = {name: value for name, value in env.items() if name != "PYTHONPATH"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean, cwd=cwd)


def test_the_serving_venv_lacks_training_and_its_extras_but_holds_the_data_sets(serving_venv: Path) -> None:
    python = serving_venv / "python"
    present = run_in(python, f"import importlib.util as u; print([m for m in {ABSENT_ON_SERVING!r} if u.find_spec(m)])")
    assert present == "[]"
    datasets = Path(run_in(python, "import service.datasets as d; print(d.__file__)")).parent
    assert not datasets.is_relative_to(ROOT)
    corpora = {path.name for path in (datasets / "corpora").iterdir()}
    assert {"README.md", "digits.csv.gz", "santafe_laser.txt", "JapaneseVowels_TEST.ts"} <= corpora


@pytest.mark.parametrize("command", CLIENT_COMMANDS.values(), ids=CLIENT_COMMANDS.keys())
def test_a_client_command_on_the_serving_install_prints_what_the_full_install_prints(
    command: list[str], serving_venv: Path, shipped_server: ShippedServer, tmp_path: Path
) -> None:
    serving = run_command([str(serving_venv / "statestream"), "client", *command], shipped_server.env, tmp_path)
    full = run_command([*STATESTREAM, "client", *command], shipped_server.env, ROOT)
    assert serving.returncode == full.returncode == 0, serving.stderr + full.stderr
    assert json.loads(serving.stdout) == json.loads(full.stdout)


def test_scenes_on_the_serving_install_writes_what_the_full_install_writes(serving_venv: Path, tmp_path: Path) -> None:
    written: dict[str, dict[str, bytes]] = {}
    for install, statestream in {"serving": [str(serving_venv / "statestream")], "full": STATESTREAM}.items():
        out = tmp_path / install
        done = run_command([*statestream, "scenes", "--out", str(out), "--count", "3"], os.environ, ROOT)
        assert done.returncode == 0, done.stderr
        written[install] = {path.name: path.read_bytes() for path in out.iterdir()}
    assert len(written["serving"]) == 4  # three PNGs and scenes.json
    assert written["serving"] == written["full"]


def test_a_drawing_on_the_serving_install_names_the_extra_it_needs(
    serving_venv: Path, shipped_server: ShippedServer, tmp_path: Path
) -> None:
    argv = [str(serving_venv / "statestream"), "client", *CLIENT_COMMANDS["complete a digit"], "--png", "sweeps.png"]
    done = run_command(argv, shipped_server.env, tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "matplotlib" in done.stderr and "statestream[train]" in done.stderr  # as the README says
    assert not (tmp_path / "sweeps.png").exists()


def test_the_data_sets_import_nothing_but_numpy_and_the_standard_library() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "started = {name.partition('.')[0] for name in sys.modules}\n"
        "import service.datasets as package\n"
        "for module in pkgutil.iter_modules(package.__path__):\n"
        "    importlib.import_module(f'service.datasets.{module.name}')\n"
        "loaded = {name.partition('.')[0] for name in sys.modules} - started - set(sys.stdlib_module_names)\n"
        "print(sorted(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "['numpy', 'service']"


def test_the_bundled_digits_are_scikit_learns() -> None:
    from sklearn.datasets import load_digits as sklearn_digits  # the dev extra holds the reference

    reference = sklearn_digits()
    bundled = load_digits()
    np.testing.assert_array_equal(bundled.images, reference.images)  # a copy of its file: exactly equal
    np.testing.assert_array_equal(bundled.flat, reference.data)
    np.testing.assert_array_equal(bundled.labels, reference.target)


def test_the_serving_install_imports_statestream_and_imports_a_graph_without_torch(
    serving_venv: Path, tmp_path: Path
) -> None:
    from tests.foreign_graphs import ONE_STEP_SPEC, write_one_step

    write_one_step(tmp_path / "one_step.onnx")  # made here, with torch; the serving install has none
    (tmp_path / "spec.toml").write_text(ONE_STEP_SPEC)
    python = serving_venv / "python"
    shown = run_in(python, "import statestream; print(statestream.__version__, statestream.Client.__module__)")
    assert shown == f"{importlib.metadata.version('statestream')} service.client.sdk"
    statestream = str(serving_venv / "statestream")
    done = run_command([statestream, "import", "one_step.onnx", "--spec", "spec.toml", "--out", "m"], {}, tmp_path)
    assert done.returncode == 0, done.stderr
    checked = run_command([statestream, "check", "m"], {}, tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith("m: ok: model 'm'"), checked.stderr
    refused = run_in(
        python,
        "import statestream\ntry:\n    statestream.export_rnn(None, None, 'x')\nexcept ImportError as e:\n    print(e)",
    )
    assert "pip install 'statestream[cpu,train]'" in refused
