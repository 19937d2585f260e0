"""``statestream serve --workers N``: N server processes on one address, one event loop each.

One process is one event loop, and one event loop tops out near 5k steps/s however many cores
the machine has (docs/benchmarks.md). Each worker is a whole ``statestream serve`` bound to the
same port with SO_REUSEPORT, so the kernel spreads connections over them and no proxy sits in
the data path. A session lives in the worker its stream reached; a resume that reaches another
worker is handed over through the session store (service/durable_sessions.py): the flag's
store, or else a private redis-server on a Unix socket that lives and dies with this supervisor
(no persistence; with it, a worker's crash loses its sessions, as one process's crash does).

The supervisor holds the port (bound, not listening) so that ``--port 0`` picks one port for all,
forwards SIGTERM and SIGINT to the workers (each drains, handing its sessions to the store), and
starts a worker again if one dies.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from service.command import EXIT_USAGE, MAX_PORT, CommandError
from service.listen_errors import listen_error
from service.settings import Settings, address

log = logging.getLogger(__name__)


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[tuple[socket.socket, int]]:
    """A socket bound (not listening) with SO_REUSEPORT: the port stays ours, and the workers can share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise listen_error(host, port, exc) from exc
        yield sock, sock.getsockname()[1]


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server on a Unix socket in a temporary folder, without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise CommandError(
            "--workers above 1 hands sessions between workers through Redis, and redis-server is not on PATH",
            EXIT_USAGE,
            hint="install redis-server (apt-get install redis-server) or give --session-store redis://HOST:PORT",
        )
    with tempfile.TemporaryDirectory(prefix="statestream-workers-") as folder:
        path = Path(folder) / "redis.sock"
        process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while not path.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise CommandError("the private redis-server for --workers did not start", EXIT_USAGE)
                time.sleep(0.02)
            yield f"unix://{path}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def worker_command(
    argv: Sequence[str], port: int, store: str, checkpoint_every: int, index: int, settings: Settings
) -> list[str]:
    """The worker's own command line: the user's flags, then the ones the supervisor decides (the last wins)."""
    extra = ["--workers", "1", "--worker-index", str(index), "--port", str(port), "--reuse-port",
             "--session-store", store, "--checkpoint-every", str(checkpoint_every)]  # fmt: skip
    if settings.metrics_port:
        extra += ["--metrics-port", str(settings.metrics_port + index)]
    return [sys.executable, "-m", "service.cli", "serve", *argv, *extra]


class Workers:
    """The running worker processes."""

    def __init__(self, commands: list[list[str]]) -> None:
        self.commands = commands
        self.processes: list[subprocess.Popen[str]] = []
        self.stopping = False

    def start(self, index: int) -> str:
        """Starts worker ``index`` and returns its first line (``statestream listening on ...``)."""
        process = subprocess.Popen(self.commands[index], stdout=subprocess.PIPE, text=True)
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise CommandError(f"worker {index} did not start (exit code {process.wait()})", EXIT_USAGE)
        return line

    def stop(self, *_: object) -> None:
        self.stopping = True
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def supervise(self) -> None:
        """Restarts any worker that died until told to stop, then waits for all to finish their drain."""
        while not self.stopping:
            for index, process in enumerate(self.processes):
                if process.poll() is not None and not self.stopping:
                    log.warning("worker %d exited with %s; starting it again", index, process.returncode)
                    self.start(index)
            time.sleep(0.2)
        for process in self.processes:
            process.wait()


def run_workers(settings: Settings, argv: Sequence[str]) -> int:
    """Serves from ``settings.worker_count`` processes until SIGTERM or SIGINT."""
    count = settings.worker_count
    if settings.metrics_port and settings.metrics_port + count - 1 > MAX_PORT:
        raise CommandError(
            f"--metrics-port {settings.metrics_port}: {count} workers need ports up to "
            f"{settings.metrics_port + count - 1}, past {MAX_PORT}",
            EXIT_USAGE,
            hint="give a lower --metrics-port (each worker serves its metrics on the next port)",
        )
    with contextlib.ExitStack() as stack:
        _, port = stack.enter_context(reserved_port(settings.host, settings.port))
        if settings.session_store:
            store, every = settings.session_store, settings.checkpoints
        else:
            store = stack.enter_context(private_redis())
            every = 0 if settings.checkpoint_every is None else settings.checkpoint_every
        workers = Workers([worker_command(argv, port, store, every, i, settings) for i in range(count)])
        signal.signal(signal.SIGTERM, workers.stop)
        signal.signal(signal.SIGINT, workers.stop)
        for index in range(count):
            workers.start(index)
        print(f"statestream listening on {address(settings.host, port)} ({count} workers)", flush=True)
        workers.supervise()
    return 0
