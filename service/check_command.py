"""``statestream check FOLDER``: the loader's checks on a model folder, without serving it.

It runs exactly what ``serve`` runs at load (``LoadedModel.from_folder`` with the task table),
so a folder it passes is one the server loads. A refusal is one line: the rule that failed
(``service.registry.LOAD_RULES``), what is wrong, and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.command import EXIT_USAGE, CommandError, Parser, nonempty_path
from service.contract import ContractError
from service.registry import LoadedModel
from service.settings import Settings
from service.tasks import driver_class, known_tasks

#: For each loader rule: how to fix a folder that fails it.
FIXES = {
    "manifest": "edit manifest.json; docs/your-model.md#the-manifest-key-by-key lists every key",
    "task": "set the manifest's task to one a driver serves: {tasks}",
    "graph": "put the .onnx file the manifest names (step_graph, init.graph) in the folder",
    "signature": "the manifest must name every graph input and output with its dtype and one session's shape, "
    "the graph's batch axis first and dynamic; a graph from elsewhere: statestream import",
    "task_fit": "the task's driver needs other inputs or outputs (docs/api.md lists each task's); "
    "or serve it as task sequence_model",
    "golden": "the graph does not compute what the manifest's golden trace records: export or import the folder again",
}


def check_folder(folder: Path) -> LoadedModel:
    """Loads ``folder`` as the server would; CommandError naming the failed rule and the fix."""
    if not folder.is_dir():
        raise CommandError(f"{folder}: no such folder", EXIT_USAGE, hint="give a model folder (it holds manifest.json)")
    try:
        return LoadedModel.from_folder(folder, Settings(provider="cpu"), driver_class)
    except ContractError as exc:
        fix = FIXES.get(exc.rule, "").format(tasks=", ".join(known_tasks()))
        raise CommandError(f"{folder}: check '{exc.rule}' failed: {exc}", EXIT_USAGE, hint=fix) from exc


def main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="statestream check",
        description="Run the loader's checks on a model folder without serving it: the manifest's schema, the\n"
        "task's driver, the graphs' signatures against the manifest, and the golden trace's replay.",
    )
    parser.add_argument("folder", type=nonempty_path, nargs="+", metavar="FOLDER", help="model folder(s) to check")
    args = parser.parse_args(list(argv))
    for folder in args.folder:
        model = check_folder(folder)
        manifest = model.manifest
        print(
            f"{folder}: ok: model {manifest.name!r} version {manifest.version} (task {manifest.task}), "
            f"{len(manifest.inputs)} input(s), {len(manifest.outputs)} output(s), "
            f"{manifest.state_bytes} state bytes per session, golden trace reproduced (max |diff| {model.golden_error:.2g})"
        )
    return 0
