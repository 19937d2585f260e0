"""The server's process: the event loop --event-loop picks, and the garbage collector it settles.

Both change only how fast the server runs (docs/benchmarks.md), so what is checked here is that
each choice is the one made, that a server on the standard loop still serves, and that a wrong
choice is a one-line usage error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service import process
from service.settings import Settings
from tests.servers import STATESTREAM, serve_process


def test_auto_picks_uvloop_where_it_is_installed_and_asyncio_runs_the_standard_loop() -> None:
    assert process.event_loop_of("auto") == "uvloop"  # a dependency of the package on Linux
    assert process.event_loop_of("asyncio") == "asyncio"

    async def name() -> str:
        return process.running_loop_name()

    assert process.run(name(), "auto") == "uvloop"
    assert process.run(name(), "asyncio") == "asyncio"


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_a_task_that_cannot_be_cancelled_does_not_keep_the_process_alive(
    choice: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What redis-py's shielded pub/sub teardown did after a SIGTERM: asyncio.run waited on it for ever."""
    monkeypatch.setattr(process, "TEARDOWN_S", 0.2)
    ended: list[str] = []

    async def stubborn() -> None:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        while True:
            try:
                await asyncio.shield(never)
            except asyncio.CancelledError:
                continue  # swallowed, every time

    async def polite() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("polite")

    async def main() -> str:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
        asyncio.get_running_loop().create_task(polite(), name="polite")
        await asyncio.sleep(0)
        return "done"

    finished: list[str] = []
    runner = threading.Thread(target=lambda: finished.append(process.run(main(), choice)), daemon=True)
    with caplog.at_level(logging.WARNING, logger="service.process"):
        runner.start()
        runner.join(timeout=30)
    assert finished == ["done"]  # returned, the stubborn task left behind
    assert ended == ["polite"]  # a task that honours cancellation still finished
    assert "1 task(s) that did not finish when cancelled: stubborn" in caplog.text


def test_settling_the_heap_freezes_what_is_alive_and_collects_less_often() -> None:
    # In a process of its own: it changes the collector of the whole process.
    code = (
        "import gc; from service import process; keep = [object() for _ in range(1000)]; "
        "process.settle_heap(); print(gc.get_threshold(), gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{process.GC_THRESHOLDS} True"


def test_a_server_on_the_standard_loop_serves_and_says_so(tiny_lm_dir: Path) -> None:
    env = {**os.environ, "STATESTREAM_MODELS_DIR": str(tiny_lm_dir), "STATESTREAM_LOG_JSON": "1"}
    with serve_process(["--event-loop", "asyncio"], env) as (server, _, target):
        predicted = subprocess.run(
            [*STATESTREAM, "client", "predict", "--model", "char_lm", "--text", "To be", "--json", "--target", target],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        logs = [json.loads(line)["msg"] for line in server.stderr.read().splitlines() if line.startswith("{")]
    assert [json.loads(line)["input"] for line in predicted.stdout.splitlines()] == list("To be")
    assert any("event loop asyncio" in message for message in logs)


def test_an_unknown_event_loop_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match=r"^event_loop: 'tokio' is not one of auto, uvloop, asyncio$"):
        Settings(event_loop="tokio")
    done = subprocess.run([*STATESTREAM, "serve", "--event-loop", "tokio"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--event-loop: 'tokio' is not one of auto, uvloop, asyncio" in done.stderr


def test_asking_for_uvloop_where_it_is_missing_is_a_usage_error_and_auto_falls_back(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['uvloop'] = None; "  # as if it were not installed
    auto = subprocess.run(
        [sys.executable, "-c", hide + "from service import process; print(process.event_loop_of('auto'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert auto.stdout.strip() == "asyncio"
    serve = (
        hide + "from service.cli import main; sys.exit(main(['serve', '--event-loop', 'uvloop', '--models-dir', '.']))"
    )
    done = subprocess.run([sys.executable, "-c", serve], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("statestream: error: --event-loop uvloop: uvloop is not installed")
    assert "Traceback" not in done.stderr
