"""The README's commands, run as a user runs them: `statestream serve` in a process, the client CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import STATESTREAM, serve_process


@pytest.fixture(scope="module")
def served(tiny_lm_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "STATESTREAM_MODELS_DIR": str(tiny_lm_dir), "STATESTREAM_LOG_JSON": "1"}
    with serve_process([], env) as (process, _, target):
        yield process, target


def client(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STATESTREAM, "client", *args, "--target", target], capture_output=True, text=True, timeout=60, check=True
    )


def test_client_models_lists_name_version_task_and_state_size(served: tuple[subprocess.Popen[str], str]) -> None:
    rows = json.loads(client(served[1], "models", "--json").stdout)
    assert rows[0]["name"] == "char_lm"
    assert rows[0]["version"] == "1"
    assert rows[0]["task"] == "language_model"
    assert rows[0]["state_bytes"] == 512


def test_client_predict_prints_one_json_line_per_character(served: tuple[subprocess.Popen[str], str]) -> None:
    text = "To be, or not to b"
    lines = client(served[1], "predict", "--model", "char_lm", "--text", text, "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == list(range(1, len(text) + 1))
    assert "".join(r["input"] for r in rows) == text
    for row in rows:
        assert len(row["top"]) == 5
        probs = [p for _, p in row["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_client_generate_is_reproducible_for_a_seed(served: tuple[subprocess.Popen[str], str]) -> None:
    args = (
        "generate",
        "--model",
        "char_lm",
        "--prompt",
        "ROMEO:",
        "--length",
        "60",
        "--temperature",
        "0.8",
        "--seed",
        "7",
    )
    first = client(served[1], *args).stdout
    second = client(served[1], *args).stdout
    assert first == second
    assert len(first.rstrip("\n")) == 60


def test_sigterm_drains_and_exits_cleanly(served: tuple[subprocess.Popen[str], str]) -> None:
    process, _ = served
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 15  # the default grace is 10 s; idle, it exits at once
    assert process.stderr is not None
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    assert any("draining" in entry["msg"] for entry in logs)
    assert any("event loop uvloop" in entry["msg"] for entry in logs)  # --event-loop auto, uvloop installed
