"""``statestream client health`` and the Dockerfile's HEALTHCHECK, against a real server.

The container's health check is only worth having if it fails when the server cannot take
sessions: these tests run the very command the Dockerfile names against a serving server (exit
0) and against one that is draining (NOT_SERVING, exit 4), and against no server at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from service.client.sdk import Client
from service.command import EXIT_REFUSED, EXIT_UNREACHABLE
from service.settings import Settings
from tests.conftest import ROOT
from tests.servers import STATESTREAM, ServerThread
from tests.waiting import wait_until


def healthcheck_command() -> list[str]:
    """The Dockerfile's ``HEALTHCHECK CMD [...]``, run with this checkout's CLI."""
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    (line,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    argv = json.loads(line.split(" CMD ", 1)[1])
    assert argv[0] == "statestream", argv
    return [*STATESTREAM, *argv[1:]]


def run(
    argv: Sequence[str], target: str, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as the image runs it: the target comes from STATESTREAM_TARGET, as the image sets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATESTREAM_")}
    env.update({"STATESTREAM_TARGET": target, **(extra_env or {})})
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def health(*args: str) -> list[str]:
    return [*STATESTREAM, "client", "health", *args]


def test_health_prints_serving_and_exits_0_on_a_serving_server(server: ServerThread) -> None:
    done = run(health(), server.target)
    assert (done.returncode, done.stdout, done.stderr) == (0, "SERVING\n", "")
    done = run(health("--json", "--service", "statestream.v1.SessionService"), server.target)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"service": "statestream.v1.SessionService", "status": "SERVING"}


def test_health_of_a_service_the_server_does_not_have_is_refused(server: ServerThread) -> None:
    done = run(health("--service", "no.such.Service"), server.target)
    assert done.returncode == EXIT_REFUSED
    assert done.stderr.startswith("statestream: error:") and "(NOT_FOUND)" in done.stderr


def test_health_with_no_server_listening_exits_4_in_one_line() -> None:
    done = run(health("--timeout-s", "3"), "127.0.0.1:1")
    assert done.returncode == EXIT_UNREACHABLE
    assert done.stdout == ""
    assert done.stderr.startswith("statestream: error: cannot reach a statestream server at 127.0.0.1:1")
    assert len(done.stderr.splitlines()) == 1


def test_the_dockerfile_healthcheck_passes_while_serving_and_fails_while_draining(tiny_lm_dir: Path) -> None:
    check = healthcheck_command()
    running = ServerThread(Settings(models_dir=tiny_lm_dir, grace_s=30.0))
    try:
        assert run(check, running.target).returncode == 0
        with Client(running.target) as client:
            session = client.open("char_lm")  # an open stream keeps the drain in its grace time
            draining = asyncio.run_coroutine_threadsafe(running.server.drain(), running.loop)
            wait_until(lambda: not running.server.store.accepting, 10, "the drain began")
            done = run(check, running.target)
            assert done.returncode == EXIT_UNREACHABLE
            assert done.stdout == "NOT_SERVING\n"
            assert done.stderr == (
                f"statestream: error: the server at {running.target} is NOT_SERVING; it is draining, or not ready yet\n"
            )
            session.close()
        draining.result(timeout=30)
        assert run(check, running.target).returncode == EXIT_UNREACHABLE  # stopped: nothing answers
    finally:
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(timeout=10)


@pytest.mark.parametrize(
    ("timeout", "why"), [("-1", "-1 is out of range (0-31536000)"), ("soon", "'soon' is not a number")]
)
def test_health_refuses_a_bad_timeout_as_a_usage_error(timeout: str, why: str, server: ServerThread) -> None:
    done = run(health("--timeout-s", timeout), server.target)
    assert done.returncode == 2
    assert done.stderr == f"statestream: error: --timeout-s: {why}; see 'statestream client health --help'\n"
