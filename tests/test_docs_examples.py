"""The examples in README.md and docs/ run against the shipped model, so they cannot rot.

Two kinds of fenced block are run; every other block is shown, not run (servers that run until
stopped, measurements, training, TLS set-ups: each page says where its numbers come from):

* ``python`` blocks run in this process against ``statestream serve`` on ``models/`` (the
  address ``127.0.0.1:50051`` a reader would use is replaced by the test server's).
* ``console`` blocks are terminal sessions: each ``$ command`` line runs (``statestream`` is
  this checkout's CLI, ``STATESTREAM_TARGET`` points at the test server) and the lines under it
  are what it must print, stdout then stderr. A line ``...`` stands for any number of lines,
  and ``...`` inside a line for any text, so a page may shorten long output.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

from service.client.sdk import DEFAULT_TARGET
from tests.conftest import ROOT, ShippedServer

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Example:
    """One command of a console block and the output the page shows for it."""

    page: str
    line: int
    command: str
    output: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(kind: str) -> list[tuple[str, int, str]]:
    """``(page, line, text)`` of every fenced block of that kind, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == kind:
                found.append((page.name, text.count("\n", 0, match.start()) + 2, match.group(2)))
    return found


def console_examples(page_name: str | None = None) -> list[Example]:
    """The ``$ command`` lines of console blocks (of one page, if named) with their shown output."""
    examples: list[Example] = []
    for page, first_line, text in blocks("console"):
        if page_name is not None and page != page_name:
            continue
        current: tuple[int, str] | None = None
        output: list[str] = []
        for offset, line in enumerate(text.splitlines()):
            if line.startswith("$ "):
                if current is not None:
                    examples.append(Example(page, current[0], current[1], tuple(output)))
                current, output = (first_line + offset, line[2:]), []
            elif current is not None:
                output.append(line)
        if current is not None:
            examples.append(Example(page, current[0], current[1], tuple(output)))
    return examples


def argv_of(command: str) -> list[str]:
    """The command as this checkout runs it (``# comments`` dropped)."""
    args = shlex.split(command, comments=True)
    if args[0] == "statestream":
        return [sys.executable, "-m", "service.cli", *args[1:]]
    return args


def shown_matches(shown: tuple[str, ...], printed: str) -> bool:
    """Whether ``printed`` is what the page shows, ``...`` standing for any lines or any text."""
    parts = []
    for line in shown:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.fullmatch("".join(parts), printed.rstrip("\n") + "\n") is not None


def run_example(example: Example, server: ShippedServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv_of(example.command), capture_output=True, text=True, timeout=300, cwd=ROOT, env=server.env
    )


def test_pages_hold_console_examples() -> None:
    # The README's "Try it" commands and the API guide's are run; a page edit that changed the
    # fence would otherwise quietly stop testing them.
    pages = {example.page for example in console_examples()}
    assert {"README.md", "api.md", "training.md"} <= pages


def test_shown_output_matching_is_strict_but_allows_ellipses() -> None:
    assert shown_matches(("a", "...", "z"), "a\nb\nc\nz\n")
    assert shown_matches(("a ... c",), "a b c")
    assert not shown_matches(("a", "z"), "a\nb\nz\n")
    assert not shown_matches(("0.41",), "0.18")


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(e, id=e.id, marks=[pytest.mark.slow] if " eval " in f" {e.command} " else [])
        for e in console_examples()
    ],
)
def test_console_example_prints_what_the_page_shows(example: Example, shipped_server: ShippedServer) -> None:
    done = run_example(example, shipped_server)
    printed = done.stdout + done.stderr
    assert "Traceback" not in printed
    assert shown_matches(example.output, printed), (
        f"{example.id}: $ {example.command}\n--- the page shows:\n"
        + "\n".join(example.output)
        + f"\n--- it printed:\n{printed}"
    )


@pytest.mark.parametrize(("page", "line", "code"), blocks("python"), ids=[f"{p}:{n}" for p, n, _ in blocks("python")])
def test_python_example_runs(
    shipped_server: ShippedServer, page: str, line: int, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert DEFAULT_TARGET in code, "an example connects where `make serve` listens, so a reader can run it"
    exec(
        compile(code.replace(DEFAULT_TARGET, shipped_server.target), f"{page}:{line}", "exec"), {"__name__": "__docs__"}
    )
    assert "refused: INVALID_ARGUMENT" in capsys.readouterr().out or "refused" not in code
