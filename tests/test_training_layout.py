"""The training side's shape: one package per task, named as the server names it, recipes read without torch.

A task is trained here (its package holds a recipe, train, export and evaluate) or its models are
imported (``statestream import``: the package says ``IMPORTED = True`` and holds evaluate only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service import tasks as served
from tests.test_import_graph import import_graph
from training.recipes import RECIPES_DIR, load_recipe
from training.tasks import UnknownTask, known_tasks, task_of

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "training" / "tasks"
PARTS = ("recipe", "train", "export", "evaluate")
#: What a task of imported models holds: only the scorer, which ``statestream eval`` runs.
IMPORTED_PARTS = ("evaluate",)

READ_EVERY_RECIPE = """
import json, sys
from training.recipes import RECIPES_DIR, load_recipe
tasks = sorted({load_recipe(path).task for path in RECIPES_DIR.glob("*.toml")})
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "onnx", "onnxruntime"))
print(json.dumps({"tasks": tasks, "heavy": heavy}))
"""


def test_reading_every_shipped_recipe_imports_no_torch() -> None:
    # A fresh interpreter: this test process has imported torch long ago.
    done = subprocess.run(
        [sys.executable, "-c", READ_EVERY_RECIPE], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    read = json.loads(done.stdout)
    assert read["heavy"] == []
    assert read["tasks"] == known_tasks()  # every trained task was read, so every task's recipe code ran


def test_a_task_is_a_package_with_its_recipe_training_export_and_evaluation_or_imported_with_evaluation() -> None:
    packages = sorted(path.parent.name for path in TASKS_DIR.glob("*/__init__.py"))
    assert packages == known_tasks(include_imported=True)
    assert set(known_tasks()) < set(packages)  # some task is of imported models (voice_activity)
    for name in packages:
        holds = {part for part in PARTS if (TASKS_DIR / name / f"{part}.py").is_file()}
        assert holds == set(IMPORTED_PARTS if task_of(name, include_imported=True).imported else PARTS), name


def test_a_task_of_imported_models_is_scored_but_never_trained() -> None:
    assert task_of("voice_activity", include_imported=True).imported
    assert "voice_activity" not in known_tasks()
    with pytest.raises(UnknownTask, match="task 'voice_activity' is of imported models") as refused:
        task_of("voice_activity")
    assert "\n" not in str(refused.value)


def test_every_task_is_one_the_server_serves() -> None:
    assert set(known_tasks(include_imported=True)) <= set(served.known_tasks())


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.toml")), ids=lambda path: path.stem)
def test_every_shipped_recipe_reads_into_its_tasks_recipe(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, task_of(recipe.task).recipe) and recipe.name == path.stem


def task_package(module: str) -> str | None:
    """``training.tasks.<task>`` for a module inside a task's package, else None."""
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["training", "tasks"] and len(parts) > 2 else None


def test_a_task_imports_the_shared_modules_never_another_task() -> None:
    crossings = sorted(
        (module, target)
        for module, targets in import_graph().items()
        if module.startswith("training.") and not module.startswith("training.experiments")
        for target in targets
        if task_package(target) is not None and task_package(target) != task_package(module)
    )
    assert crossings == []
