"""The code's shape: short module docstrings and short functions in service/, training/, loadtest/.

A module docstring says what a reader needs in at most 15 lines (history and measurements belong
in docs/), and no function runs over 80 lines. Tests and the generated ``service/api/`` are not
held to either. Each module is read with ``ast``, so nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training", "loadtest")
GENERATED = ("service", "api")
MAX_DOCSTRING_LINES = 15
MAX_FUNCTION_LINES = 80


def modules() -> Iterator[Path]:
    """Every Python module held to the rules, relative to the repository root."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[: len(GENERATED)] != GENERATED:
                yield relative


def docstring_lines(tree: ast.Module) -> int:
    """Lines of the module docstring's text (the closing quotes' own line is not counted); 0 without one."""
    docstring = ast.get_docstring(tree, clean=False)
    return len(docstring.splitlines()) if docstring else 0


def long_functions(tree: ast.Module, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (N lines)`` for each function or method, nested ones included, of over ``limit`` lines.

    A function's lines run from its ``def`` to its last line, docstring and nested functions included.
    """
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{node.name} ({lines} lines)")
    return found


def parsed(relative: Path) -> ast.Module:
    return ast.parse((ROOT / relative).read_text(encoding="utf-8"), filename=str(relative))


def test_the_walk_covers_the_three_packages_and_skips_generated_code() -> None:
    walked = {path.as_posix() for path in modules()}
    assert {"service/scheduler.py", "training/loops.py", "loadtest/bench.py"} <= walked
    assert not any(path.startswith("service/api/") for path in walked)
    assert not any(path.startswith("tests/") for path in walked)


def test_the_checks_draw_the_line_at_15_docstring_lines_and_80_function_lines() -> None:
    def module(docstring_body_lines: int, function_body_lines: int) -> ast.Module:
        docstring = "\n".join(["Summary."] + [f"line {i}" for i in range(docstring_body_lines)])
        body = "\n".join(f"    x{i} = {i}" for i in range(function_body_lines))
        return ast.parse(f'"""{docstring}\n"""\n\n\ndef f():\n{body}\n')

    assert docstring_lines(module(14, 1)) == MAX_DOCSTRING_LINES
    assert docstring_lines(module(15, 1)) == MAX_DOCSTRING_LINES + 1
    assert docstring_lines(ast.parse("x = 1\n")) == 0
    assert long_functions(module(0, MAX_FUNCTION_LINES - 1)) == []  # the def line + 79 = 80
    assert long_functions(module(0, MAX_FUNCTION_LINES)) == [f"f ({MAX_FUNCTION_LINES + 1} lines)"]
    nested = ast.parse("class C:\n    async def g(self):\n" + "        pass\n" * MAX_FUNCTION_LINES)
    assert long_functions(nested) == [f"g ({MAX_FUNCTION_LINES + 1} lines)"]


def test_module_docstrings_are_at_most_15_lines() -> None:
    too_long = [
        f"{relative}: {lines} lines"
        for relative in modules()
        if (lines := docstring_lines(parsed(relative))) > MAX_DOCSTRING_LINES
    ]
    assert not too_long, "module docstrings over 15 lines (move history and measurements to docs/):\n" + "\n".join(
        too_long
    )


def test_no_function_is_over_80_lines() -> None:
    too_long = [f"{relative}: {name}" for relative in modules() for name in long_functions(parsed(relative))]
    assert not too_long, "functions over 80 lines:\n" + "\n".join(too_long)
