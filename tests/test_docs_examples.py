"""The Python examples in docs/ run against a live server, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.servers import ServerThread

DOCS = Path(__file__).parents[1] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def examples() -> list[tuple[str, int, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for index, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((page.name, index, match.group(1)))
    return found


@pytest.mark.parametrize(("page", "index", "code"), examples(), ids=[f"{p}#{i}" for p, i, _ in examples()])
def test_docs_example_runs(
    server: ServerThread, page: str, index: int, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exec(compile(code, f"{page}#{index}", "exec"), {"TARGET": server.target, "__name__": "__docs__"})
    assert "refused: INVALID_ARGUMENT" in capsys.readouterr().out or "refused" not in code
