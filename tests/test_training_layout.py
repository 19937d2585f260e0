"""The training side's shape: one package per kind, named as the server names the task, recipes read without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service import tasks
from tests.test_import_graph import import_graph
from training.kinds import kind_of, known_kinds
from training.recipes import RECIPES_DIR, load_recipe

ROOT = Path(__file__).resolve().parent.parent
KINDS_DIR = ROOT / "training" / "kinds"
PARTS = ("recipe", "train", "export", "evaluate")

READ_EVERY_RECIPE = """
import json, sys
from training.recipes import RECIPES_DIR, load_recipe
kinds = sorted({load_recipe(path).kind for path in RECIPES_DIR.glob("*.toml")})
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "onnx", "onnxruntime"))
print(json.dumps({"kinds": kinds, "heavy": heavy}))
"""


def test_reading_every_shipped_recipe_imports_no_torch() -> None:
    # A fresh interpreter: this test process has imported torch long ago.
    done = subprocess.run(
        [sys.executable, "-c", READ_EVERY_RECIPE], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    read = json.loads(done.stdout)
    assert read["heavy"] == []
    assert read["kinds"] == known_kinds()  # every kind was read, so every kind's recipe code ran


def test_a_kind_is_a_package_with_its_recipe_training_export_and_evaluation() -> None:
    packages = sorted(path.parent.name for path in KINDS_DIR.glob("*/__init__.py"))
    assert packages == known_kinds()
    for name in packages:
        assert all((KINDS_DIR / name / f"{part}.py").is_file() for part in PARTS), name


def test_every_kind_is_a_task_the_server_serves() -> None:
    assert set(known_kinds()) <= set(tasks.known_tasks())


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.toml")), ids=lambda path: path.stem)
def test_every_shipped_recipe_reads_into_its_kinds_recipe(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, kind_of(recipe.kind).recipe) and recipe.name == path.stem


def kind_package(module: str) -> str | None:
    """``training.kinds.<kind>`` for a module inside a kind's package, else None."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["training", "kinds"] and len(parts) > 2 else None


def test_a_kind_imports_the_shared_modules_never_another_kind() -> None:
    crossings = sorted(
        (module, target)
        for module, targets in import_graph().items()
        if module.startswith("training.") and not module.startswith("training.experiments")
        for target in targets
        if kind_package(target) is not None and kind_package(target) != kind_package(module)
    )
    assert crossings == []
