"""Imports point one way: no cycle in service/, training/ or loadtest/, and the serving core in layers.

The graph is read with ``ast`` from the source, so it counts every import: at the top of a
module, inside functions, and under ``TYPE_CHECKING``. A cycle that only typing or a lazy import
closes is still a cycle for a reader and for the next refactor.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import tasks

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "training", "loadtest")

#: The serving core, bottom up: a module may import its own layer and those below, never above.
LAYERS = (
    ("service.settings", "service.contract"),
    ("service.registry",),
    ("service.calls", "service.slabs", "service.device_slabs", "service.scheduler"),
    ("service.runtime",),
    ("service.session_store", "service.durable_sessions"),
    ("service.engine",),
    ("service.servicers",),
)
#: Drivers sit beside the layers: they may use what is below the runtime, nothing from it up.
DRIVERS = "service.drivers"
DRIVERS_MAY_NOT_IMPORT = ("service.runtime", "service.session_store", "service.durable_sessions", "service.engine")
#: The CLI's dispatch of the commands that live in other extras (it names the extra when missing).
CLI_DISPATCH = {
    ("service.cli", "training"),
    ("service.cli", "training.cli"),
    ("service.cli", "loadtest.bench"),
    ("service.cli", "loadtest.slo"),
    # `import statestream`'s export_module/export_rnn: torch's side, imported on first use.
    ("service.public.statestream", "training"),
    ("service.public.statestream", "training.module_export"),
}
#: What training/ may use of service/: the manifest schema, the data sets, the command framework, and the
#: importer (no server code: the contract, onnx and ONNX Runtime), which wraps an exported module's layout.
TRAINING_USES = ("service.contract", "service.datasets", "service.command", "service.importer")
#: And one driver: the voice-activity scorer counts speech segments with the served driver's own
#: event state machine (VADIterator's), so its score is of the events served, not of a copy.
TRAINING_USES_A_DRIVER = {("training.tasks.voice_activity.evaluate", "service.drivers.voice_activity")}


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module name an import statement anywhere in the file names (relative ones resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (a name resolves to the longest module it is in)."""
    files = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = {resolve(name) for name in imported_names(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in layer):
            return rank
    return None


def is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_imports_inside_functions_and_under_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service.engine import SessionEngine\n"
        "def f():\n    import service.runtime\n    from . import sibling\n"
    )
    names = set(imported_names(source, "service.probe"))
    assert {"service.engine", "service.runtime", "service.sibling"} <= names


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_service_never_imports_training_or_loadtest(graph: dict[str, set[str]]) -> None:
    crossings = {
        (module, target)
        for module, targets in graph.items()
        if is_under(module, "service")
        for target in targets
        if is_under(target, "training") or is_under(target, "loadtest")
    }
    assert crossings <= CLI_DISPATCH, sorted(crossings - CLI_DISPATCH)


def test_training_uses_only_the_contract_the_data_and_the_commands_of_service(graph: dict[str, set[str]]) -> None:
    crossings = {
        (module, target)
        for module, targets in graph.items()
        if is_under(module, "training")
        for target in targets
        if is_under(target, "service") and not any(is_under(target, allowed) for allowed in TRAINING_USES)
    }
    assert crossings <= TRAINING_USES_A_DRIVER, sorted(crossings - TRAINING_USES_A_DRIVER)


def test_the_serving_core_imports_only_downwards(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in graph.items():
        rank = layer_of(module)
        if rank is None:
            continue
        upward += [(module, t) for t in targets if (layer_of(t) or 0) > rank]
    assert upward == []


def test_drivers_do_not_reach_the_sessions_or_the_engine(graph: dict[str, set[str]]) -> None:
    reaching = [
        (module, target)
        for module, targets in graph.items()
        if is_under(module, DRIVERS)
        for target in targets
        if any(is_under(target, layer) for layer in DRIVERS_MAY_NOT_IMPORT) or is_under(target, "service.servicers")
    ]
    assert reaching == []


def test_only_the_task_table_names_the_drivers_of_kinds(graph: dict[str, set[str]]) -> None:
    kinds = {cls.__module__ for cls in tasks.drivers().values()}
    naming = [
        (module, target)
        for module, targets in graph.items()
        if is_under(module, "service") and not is_under(module, DRIVERS) and module != "service.tasks"
        for target in targets & kinds
    ]
    assert naming == []
