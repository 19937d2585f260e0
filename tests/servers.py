"""A real statestream server on a loopback port, run on its own event-loop thread for tests."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from service.auth import Authenticator
from service.server import Server
from service.settings import Settings

T = TypeVar("T")


class ServerThread:
    """Starts ``Server`` on port 0 in a background thread; ``target`` is where it listens."""

    def __init__(self, settings: Settings, auth: Authenticator | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self.server: Server = self.call(Server.start(settings.replace(port=0), auth))
        self.target = f"{settings.host}:{self.server.port}"

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the server's loop (e.g. to inspect or sweep the session store)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


STATESTREAM = [sys.executable, "-m", "service.cli"]


@contextmanager
def serve_process(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None, stderr: int | IO[Any] = subprocess.PIPE
) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``statestream serve ARGS --port 0`` as a child process, the way a user starts it.

    Yields the process, its first line (``statestream listening on HOST:PORT (...)``) and the
    target it names; the process is killed at the end if it is still running.
    """
    process = subprocess.Popen(
        [*STATESTREAM, "serve", *args, "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True,
        env=dict(env), cwd=cwd,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"the server did not start: {line!r}"
        yield process, line, match.group(1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
