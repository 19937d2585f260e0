"""The pieces of a scaled-out deployment, started by tests on loopback ports: Redis and replicas.

Redis is the system's ``redis-server`` (Debian's package; ``make test`` installs it), with
append-only persistence (``appendfsync everysec``, as docs/operations.md advises) in the test's
folder, so a restart finds what was acknowledged before it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from loadtest.front import free_port
from service.client import Client
from service.redis_store import record_key, session_key
from tests.servers import serve_process
from tests.waiting import wait_until


class RedisServer:
    """A redis-server on a free loopback port; ``kill`` and ``start`` again keep its port and its AOF.

    ``password`` makes it ask for one (``--requirepass``); ``socket`` also listens on that unix socket.
    """

    def __init__(self, folder: Path, password: str | None = None, socket: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs Debian's package)"
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.password, self.socket = password, socket
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec",
             *(("--requirepass", self.password) if self.password else ()),
             *(("--unixsocket", str(self.socket), "--unixsocketperm", "700") if self.socket else ())],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with self.client() as client:
            wait_until(lambda: _answers_ping(client), 10, "redis-server started")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password)


@contextlib.contextmanager
def redis_server(folder: Path, password: str | None = None, socket: Path | None = None) -> Iterator[RedisServer]:
    server = RedisServer(folder, password, socket)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


@contextlib.contextmanager
def replica(models_dir: Path, store: str, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``statestream serve`` with the session store, as its own process; yields it and its target."""
    env = {**os.environ, "STATESTREAM_LOG_LEVEL": "WARNING"}
    args = ["--models-dir", str(models_dir), "--session-store", store, "--grace-s", "5", *extra]
    with serve_process(args, env, stderr=subprocess.DEVNULL) as (process, _, target):
        yield process, target


def _answers_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def stored_record(client: redis.Redis, session_id: str) -> bytes | None:
    """The session's record as the store holds it now: at its current epoch's key (None: no session)."""
    epoch = client.hget(session_key(session_id), "epoch")
    return None if epoch is None else client.get(record_key(session_id, int(epoch)))


def checkpoint_failures(metrics_port: int) -> float:
    """How many checkpoints the replica whose /metrics is on ``metrics_port`` could not write, so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        exposition = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "statestream_checkpoint_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def holds_session(target: str) -> bool:
    """Whether the replica at ``target`` holds an open session now (asked directly, not through the front)."""
    with Client(target) as client:
        return any(model.active_sessions for model in client.list_models())
