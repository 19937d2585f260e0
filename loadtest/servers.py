"""Server variants as child processes on 127.0.0.1, each stopped by its PID.

``ServerProcess.start`` launches a variant (``python -m service.cli serve``, the echo
ceiling or the minimal server), reads the port it bound from its first line, and ``stop`` ends that one process:
SIGTERM, then SIGKILL if it does not go within a few seconds. Use it as a context manager so a
failing benchmark never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import NamedTuple, NoReturn, ParamSpec

import psutil

from service.process import OWN_THREAD_PREFIXES

HOST = "127.0.0.1"
P = ParamSpec("P")


def stopping_children_on_sigterm(main: Callable[P, int]) -> Callable[P, int]:
    """A command that SIGTERM (a CI timeout, ``kill``) stops as Ctrl-C does.

    Python's default for SIGTERM ends the process at once, so every server, Envoy, Redis and load
    generator it started would be left running: their context managers never run. Raised as
    KeyboardInterrupt, it unwinds through them. The handler before is put back afterwards.
    """

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        if threading.current_thread() is not threading.main_thread():
            return main(*args, **kwargs)  # only the main thread may set a handler
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return run


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


_LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")


def serve_command(models_dir: Path, scheduler: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The statestream server with limits that let the benchmark open 100k sessions."""
    return [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--models-dir",
        str(models_dir),
        "--host",
        HOST,
        "--port",
        "0",
        "--scheduler",
        scheduler,
        "--log-level",
        "WARNING",
        "--max-sessions",
        "1000000",
        "--max-sessions-per-caller",
        "1000000",
        "--max-streams",
        "100000",
        *extra,
    ]


def echo_command() -> list[str]:
    return [sys.executable, "-m", "loadtest.echo", "--host", HOST, "--port", "0"]


def minimal_command(models_dir: Path, model: str) -> list[str]:
    """The bare server (``loadtest.minimal``) serving one model."""
    return [
        sys.executable, "-m", "loadtest.minimal", "--models-dir", str(models_dir), "--model", model,
        "--host", HOST, "--port", "0",
    ]  # fmt: skip


#: Where a server child runs: this checkout's root.
CHILD_FOLDER = Path(__file__).resolve().parent.parent


def child_environment(environ: Mapping[str, str | None]) -> dict[str, str]:
    """A server child's environment: the caller's, less its STATESTREAM_* variables (the variant's
    flags alone configure it), unbuffered, with ``environ`` on top (None: unset there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in environ.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class ServerVariant(NamedTuple):
    """A server the bench compares: its name, its command line, and the variables its child gets
    on top of the caller's (None: unset there)."""

    name: str
    command: list[str]
    environ: Mapping[str, str | None] = {}

    def server(self) -> ServerProcess:
        return ServerProcess(self.name, self.command, environ=self.environ)


@dataclass
class ServerProcess:
    """One server variant running as a child process."""

    name: str
    command: list[str]
    start_timeout_s: float = 120.0
    process: subprocess.Popen[str] | None = None
    port: int = 0
    #: grpc.aio's poller thread(s), found once the server listens (``aio_pollers``).
    pollers: frozenset[int] = frozenset()
    #: Variables this child gets on top of the caller's (None: unset there).
    environ: Mapping[str, str | None] = field(default_factory=dict)
    _log: deque[str] = field(default_factory=lambda: deque(maxlen=50))

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_environment(self.environ),
            cwd=CHILD_FOLDER,
        )
        try:
            self.port = self._wait_for_port()
            self.pollers = aio_pollers(self.pid)
        except BaseException:
            self.stop()
            raise
        # Keep draining its output so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain, name=f"{self.name}-log", daemon=True).start()

    def _wait_for_port(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        for line in self.process.stdout:
            self._log.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                return int(match.group(2))
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{self.name} did not start: " + "\n".join(self._log))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._log.append(line.rstrip())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """Stops this process by its PID: SIGTERM, then SIGKILL after 10 s; returns its exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used so far: all its threads, and its child processes (--workers)."""
        process = psutil.Process(self.pid)
        total = 0.0
        for member in (process, *process.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
        return total

    def thread_cpu_seconds(self) -> dict[str, float]:
        """``thread_cpu_seconds`` of this server's process; {} for a server of several processes.

        A server with child processes (``--workers``: its workers and a private redis-server) has
        no split: a child that is not a Python server has no loop or gRPC threads to tell apart,
        and its CPU would land in the wrong bucket. Nor has an object that started no process.
        """
        if self.process is None:
            return {}
        process = psutil.Process(self.pid)
        if process.children(recursive=True):
            return {}
        return thread_cpu_seconds(self.pid, self.pollers)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def recent_output(self) -> str:
        return "\n".join(self._log)


#: The buckets of ``thread_cpu_seconds``, in the order the bench prints them.
THREAD_BUCKETS = ("loop", "python", "grpc")


def thread_cpu_seconds(pid: int, pollers: frozenset[int] = frozenset()) -> dict[str, float]:
    """User + system CPU seconds so far of one process's live threads, in ``THREAD_BUCKETS``.

    ``loop``: its main thread (the event loop; the bare servers run ONNX Runtime on it too).
    ``python``: statestream's ORT worker (it names itself ``ort-<model>``) and the threads that
    keep the process's OS name, which Python and native libraries start (ONNX Runtime's and
    OpenBLAS's pools), but for ``pollers``. ``grpc``: gRPC's threads: ``pollers``
    (``aio_pollers``) and the threads gRPC's core names (``grpc_global_tim``, ``event_engine``...).
    A thread that has ended is in no bucket (its CPU leaves ``/proc/PID/task`` with it). Each
    thread's time is read in nanoseconds where the kernel keeps it (``thread_run_seconds``).
    """
    main_name = thread_name(pid, pid)
    split = dict.fromkeys(THREAD_BUCKETS, 0.0)
    for thread in psutil.Process(pid).threads():
        run_s = thread_run_seconds(pid, thread.id)
        cpu_s = thread.user_time + thread.system_time if run_s is None else run_s
        if thread.id == pid:
            split["loop"] += cpu_s
        elif thread.id not in pollers and _own_thread(thread_name(pid, thread.id), main_name):
            split["python"] += cpu_s
        else:
            split["grpc"] += cpu_s
    return split


def thread_run_seconds(pid: int, tid: int) -> float | None:
    """Seconds thread ``tid`` of ``pid`` has run on a CPU, from ``/proc/PID/task/TID/schedstat``
    (nanoseconds); None where the kernel keeps no schedstat or the thread has ended.

    ``/proc``'s user and system times count whole clock ticks (10 ms here), too coarse to split
    a few seconds of a server's CPU among its threads: two rows once read the same to the tick.
    """
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _own_thread(name: str, main_name: str) -> bool:
    """Whether a thread of this name is the server's own (the ``python`` bucket) rather than gRPC's."""
    return name in (main_name, "") or name.startswith(OWN_THREAD_PREFIXES)


def aio_pollers(pid: int, looks: int = 5) -> frozenset[int]:
    """The threads of an idle server that keep the process's name and wait in epoll: grpc.aio's poller.

    grpc.aio polls its completion queue from a Python thread (``_poll_wrapper``), so the thread
    has no name of its own; of the unnamed threads besides the main one, only it waits in epoll
    while the server is idle (the ORT worker and the native pools wait on futexes). Read
    ``looks`` times 10 ms apart, in case it was awake at one; empty where the kernel hides
    the wait channel.
    """
    main_name = thread_name(pid, pid)
    found: set[int] = set()
    for look in range(looks):
        for thread in psutil.Process(pid).threads():
            if thread.id != pid and thread_name(pid, thread.id) == main_name and _in_epoll(pid, thread.id):
                found.add(thread.id)
        if look + 1 < looks:
            time.sleep(0.01)
    return frozenset(found)


def _in_epoll(pid: int, tid: int) -> bool:
    """Whether thread ``tid`` of ``pid`` sleeps in epoll (its kernel wait channel: ``do_epoll_wait``, ``ep_poll``)."""
    try:
        channel = Path(f"/proc/{pid}/task/{tid}/wchan").read_text().strip()
    except OSError:
        return False
    return "epoll" in channel or channel.startswith("ep_")


def thread_name(pid: int, tid: int) -> str:
    """The OS name of thread ``tid`` of ``pid`` (Linux), or "" when it has ended."""
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""
