"""gRPC core's settings from the environment: the server's sockets are read by grpc.aio's poller.

The experiment only changes which thread does the reading, so the test watches the threads: a
server's EventEngine threads wake for each message where they read the sockets, and hardly at
all where the poller does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from loadtest.servers import thread_name
from service.grpc_environment import LISTENER_EXPERIMENT, with_defaults
from tests.servers import STATESTREAM, serve_process

#: Characters sent to the server, one step each: at least this many messages each way.
STEPS = 400


def event_engine_wakeups(pid: int) -> int:
    """How many times the process's EventEngine threads were put on a CPU (``schedstat``'s third field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if thread_name(pid, int(task.name)) != "event_engine":
            continue
        try:
            total += int((task / "schedstat").read_text().split()[2])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total


def wakeups_and_start_line(models: Path, experiments: str | None) -> tuple[int, str]:
    """EventEngine wake-ups of a server over STEPS streamed steps, and its start log line."""
    env = {**os.environ, "STATESTREAM_MODELS_DIR": str(models), "STATESTREAM_LOG_JSON": "1"}
    env.pop("GRPC_EXPERIMENTS", None)
    if experiments is not None:
        env["GRPC_EXPERIMENTS"] = experiments
    with serve_process([], env) as (server, _, target):
        before = event_engine_wakeups(server.pid)
        subprocess.run(
            [*STATESTREAM, "client", "predict", "--model", "char_lm", "--text", "ab" * (STEPS // 2), "--json",
             "--target", target],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        woken = event_engine_wakeups(server.pid) - before
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        logs = [json.loads(line)["msg"] for line in server.stderr.read().splitlines() if line.startswith("{")]
    return woken, next(message for message in logs if message.startswith("serving "))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc/PID/task (Linux)")
def test_the_poller_reads_the_sockets_by_default_and_gRPCs_own_default_can_be_asked_for(tiny_lm_dir: Path) -> None:
    by_poller, poller_line = wakeups_and_start_line(tiny_lm_dir, None)
    by_engine, engine_line = wakeups_and_start_line(tiny_lm_dir, LISTENER_EXPERIMENT)
    assert "sockets read by the grpc.aio poller" in poller_line
    assert "sockets read by the event engine" in engine_line
    assert by_engine >= STEPS  # each message read wakes an EventEngine thread
    assert by_poller < STEPS // 4, (by_poller, by_engine)  # the connection and timers only


def test_defaults_keep_what_the_user_set() -> None:
    fresh: dict[str, str] = {}
    with_defaults(fresh)
    assert fresh == {"GRPC_VERBOSITY": "ERROR", "GRPC_EXPERIMENTS": "-event_engine_listener"}
    others = {"GRPC_VERBOSITY": "INFO", "GRPC_EXPERIMENTS": "work_serializer_dispatch, -tcp_frame_size_tuning"}
    with_defaults(others)
    assert others == {
        "GRPC_VERBOSITY": "INFO",
        "GRPC_EXPERIMENTS": "work_serializer_dispatch,-tcp_frame_size_tuning,-event_engine_listener",
    }
    for named in ("event_engine_listener", "-event_engine_listener", " event_engine_listener "):
        kept = {"GRPC_EXPERIMENTS": named}
        with_defaults(kept)
        assert kept["GRPC_EXPERIMENTS"] == named
