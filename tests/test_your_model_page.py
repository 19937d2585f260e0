"""docs/your-model.md runs as a reader would run it: every block, in order, in an empty folder.

``py`` blocks run in one namespace; a ``toml`` block is written to the file its first line names
(``# tagger.toml``); ``shell-session`` blocks are terminal sessions checked as the docs test
checks ``console`` blocks (``tests/test_docs_examples.shown_matches``); the ``bash`` block that
serves ``my_models`` is where this test starts a real server on it (``statestream serve`` runs
until stopped), and the address a reader would use is replaced by that server's.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from service.client.sdk import DEFAULT_TARGET
from service.settings import Settings
from tests.conftest import ROOT
from tests.servers import ServerThread
from tests.test_docs_examples import argv_of, shown_matches

PAGE = ROOT / "docs" / "your-model.md"
BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```\n", re.S | re.M)


def page_blocks() -> list[tuple[str, int, str]]:
    text = PAGE.read_text()
    return [(m.group(1), text.count("\n", 0, m.start()) + 2, m.group(2)) for m in BLOCK.finditer(text)]


def run_session(text: str, line: int, env: dict[str, str]) -> None:
    """Each ``$ command`` of a shell-session block, its output matched against the lines under it."""
    commands: list[tuple[str, list[str]]] = []
    for row in text.splitlines():
        if row.startswith("$ "):
            commands.append((row[2:], []))
        else:
            commands[-1][1].append(row)
    for command, shown in commands:
        done = subprocess.run(argv_of(command), capture_output=True, text=True, timeout=120, env=env)
        printed = done.stdout + done.stderr
        assert "Traceback" not in printed
        assert shown_matches(tuple(shown), printed), f"your-model.md:{line}: $ {command}\nprinted:\n{printed}"


def test_the_page_runs_from_a_fresh_gru_and_a_foreign_onnx_file_to_served_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    server: ServerThread | None = None
    kinds = []
    try:
        for kind, line, text in page_blocks():
            kinds.append(kind)
            if kind == "py":
                code = text.replace(DEFAULT_TARGET, server.target) if server is not None else text
                exec(compile(code, f"your-model.md:{line}", "exec"), namespace)
            elif kind == "toml":
                (tmp_path / text.splitlines()[0].removeprefix("# ").strip()).write_text(text)
            elif kind == "shell-session":
                run_session(text, line, env)
            elif kind == "bash" and "statestream serve --models-dir my_models" in text:
                server = ServerThread(Settings(models_dir=tmp_path / "my_models"))
                env["STATESTREAM_TARGET"] = server.target
    finally:
        if server is not None:
            server.stop()
    assert kinds.count("py") >= 4 and kinds.count("shell-session") >= 4 and server is not None
    printed = capsys.readouterr().out
    assert "gru [(8,)] [(2, 32)]" in printed
    assert "gru: max |served - PyTorch| < 1e-5: True" in printed
    assert "tagger: max |served - original| < 1e-5: True" in printed
    assert not (tmp_path / "my_models" / "wrong").exists()
